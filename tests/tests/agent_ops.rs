//! Operating lb-agent as a process: its probes, its exit code, who may change it through its
//! socket, and its live configuration.
//!
//! Each test runs the real binary (from `LB_BIN_DIR`, or a `cargo build -p lb-agent -p lbctl`)
//! in a network namespace of its own, named after the test, with no `--devices`, so that only
//! the agent's lifecycle is under test: programs are loaded and maps pinned under a bpf root of
//! the test's own, nothing is attached. A fake API server (`lb_tests::kube_api`) listens
//! inside the same namespace when a test needs `--source kube`.
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use lb_lab::Binaries;
use lb_testkit::{Netns, Process, ok, wait_until};
use lb_tests::agent::{READY_TIMEOUT, pinned_datapath_config};
use lb_tests::kube_api::{FakeApiServer, Kind};

/// Deadline for an agent to answer, exit, or apply a change.
const DEADLINE: Duration = lb_testkit::patience::SETTLE_WITHIN;
/// Longest the kube source may take to recover from failed LISTs (its backoff grows to 30 s).
const RECOVERY: Duration = Duration::from_secs(90);
/// Port of the metrics endpoint inside each test's namespace.
const METRICS_PORT: u16 = 9963;

/// A namespace, a run directory and a bpf root for one test; removed on drop.
struct Node {
    bins: Binaries,
    run_dir: PathBuf,
    bpf_root: PathBuf,
    ns: Netns,
}

impl Node {
    fn up(name: &str) -> Self {
        let short: String = name.chars().take(8).collect();
        let tag = format!("lbo-{short}-{}", std::process::id());
        let run_dir = PathBuf::from(format!("/run/{tag}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).expect("create run dir");
        ok(lb_testkit::ensure_bpffs(), "mount bpffs");
        let bpf_root = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
        let _ = std::fs::remove_dir_all(&bpf_root);
        Self {
            bins: lb_tests::agent::binaries(),
            run_dir,
            bpf_root,
            ns: ok(Netns::create(&tag), "test namespace"),
        }
    }

    fn socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    /// The flags every agent of these tests gets, then `extra`.
    fn args(&self, extra: &[String]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--devices=".to_owned(),
            "--node-name=node".to_owned(),
            "--node-ip=192.168.99.1".to_owned(),
            format!("--bpf-root={}", self.bpf_root.display()),
            format!("--socket={}", self.socket().display()),
            format!("--metrics-address=127.0.0.1:{METRICS_PORT}"),
        ]
        .into();
        args.extend_from_slice(extra);
        args
    }

    /// Starts lb-agent with `args` and the environment `env`, its output in `agent.log`.
    fn spawn(&self, args: &[String], env: &[(&str, &str)]) -> Process {
        let line = self.env_cmdline(args, env);
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        ok(
            self.ns.spawn("env", &line, &self.run_dir.join("agent.log")),
            "start lb-agent",
        )
    }

    /// `K=V … lb-agent ARGS`, the arguments of `env`.
    fn env_cmdline(&self, args: &[String], env: &[(&str, &str)]) -> Vec<String> {
        env.iter()
            .map(|(key, value)| format!("{key}={value}"))
            .chain(std::iter::once(
                self.bins.agent.to_string_lossy().into_owned(),
            ))
            .chain(args.iter().cloned())
            .collect()
    }

    /// `GET path` on the metrics endpoint: the status code and the body.
    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let path = path.to_owned();
        ok(
            self.ns.within(move || http_get(METRICS_PORT, &path)),
            "enter the test namespace",
        )
    }

    /// `Ok(Some(()))` once `/readyz` answers 200; otherwise what it answered, for a timeout to
    /// report.
    fn ready(&self) -> Result<Option<()>, String> {
        match self.get("/readyz")? {
            (200, _) => Ok(Some(())),
            (code, body) => Err(format!("/readyz {code}: {}", body.trim())),
        }
    }

    /// A kubeconfig for a server at `url`, written into the run directory.
    fn kubeconfig(&self, url: &str) -> PathBuf {
        let path = self.run_dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Unpinning the maps frees them: no device holds a program.
        if let Err(err) = std::fs::remove_dir_all(&self.bpf_root)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cannot remove {}: {err}", self.bpf_root.display());
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A one-request HTTP/1.1 GET on 127.0.0.1:`port` of the calling thread's namespace.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|err| err.to_string())?;
    stream
        .set_read_timeout(Some(lb_testkit::patience::ANSWER_WITHIN))
        .map_err(|err| err.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
    )
    .map_err(|err| err.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|err| err.to_string())?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// A tokio runtime for the fake API server, and the server listening inside `node`'s
/// namespace; the server stops when both are dropped.
fn fake_api_in(node: &Node) -> (tokio::runtime::Runtime, FakeApiServer) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let listener = ok(
        node.ns
            .within(|| std::net::TcpListener::bind("127.0.0.1:0")),
        "enter the test namespace",
    )
    .expect("bind the fake API server");
    listener.set_nonblocking(true).expect("nonblocking");
    let server = {
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        FakeApiServer::start_on(listener).expect("fake API server")
    };
    (runtime, server)
}

#[test]
fn liveness_passes_while_the_api_server_fails_and_readiness_waits_for_the_first_sync() {
    let node = Node::up("probes");
    let (_runtime, api) = fake_api_in(&node);
    // Every LIST of Services fails: the source cannot sync, as when the API server is down.
    api.fail_next_lists(Kind::Service, u32::MAX);
    let kubeconfig = node.kubeconfig(&api.url());
    let mut agent = node.spawn(
        &node.args(&["--source=kube".to_owned()]),
        &[("KUBECONFIG", &kubeconfig.display().to_string())],
    );

    let live = ok(
        agent.wait_until("/healthz to answer 200", READY_TIMEOUT, || {
            Ok(node.get("/healthz").ok().filter(|(code, _)| *code == 200))
        }),
        "liveness",
    );
    assert_eq!(live.1, "ok\n");
    let (code, body) = node.get("/readyz").expect("GET /readyz");
    assert_eq!(
        (code, body.as_str()),
        (503, "not ready: first sync not done\n"),
        "not ready before the first sync"
    );
    // Still alive after more failed LISTs: liveness never depends on the source.
    let failed_before = ok(
        agent.wait_until("a failed LIST", DEADLINE, || {
            let failed = api.stats(Kind::Service).failed_lists;
            Ok((failed > 0).then_some(failed))
        }),
        "the source lists",
    );
    ok(
        agent.wait_until("another failed LIST", RECOVERY, || {
            Ok((api.stats(Kind::Service).failed_lists > failed_before).then_some(()))
        }),
        "the source retries",
    );
    assert_eq!(node.get("/healthz").expect("GET /healthz").0, 200);

    api.fail_next_lists(Kind::Service, 0);
    ok(
        agent.wait_until("/readyz to answer 200", RECOVERY, || node.ready()),
        "readiness after the first sync",
    );
    assert_eq!(node.get("/healthz").expect("GET /healthz").0, 200);
}

/// `lb-agent ARGS` with `env`, run to its exit: its status and its output.
fn run_to_exit(
    node: &Node,
    args: &[String],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String) {
    let log = node.run_dir.join("exit.log");
    let out = std::fs::File::create(&log).expect("create log");
    let mut child = node
        .ns
        .command("env")
        .args(node.env_cmdline(args, env))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log"))
        .stderr(out)
        .spawn()
        .expect("spawn lb-agent");
    let status = wait_until("lb-agent to exit", DEADLINE, || {
        child.try_wait().map_err(|err| err.to_string())
    })
    .unwrap_or_else(|err| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{err}:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_source_that_fails_after_the_datapath_is_loaded_exits_non_zero() {
    let node = Node::up("exitcode");
    let missing = node.run_dir.join("no-such-kubeconfig");
    let (status, output) = run_to_exit(
        &node,
        &node.args(&["--source=kube".to_owned()]),
        &[("KUBECONFIG", &missing.display().to_string())],
    );
    assert!(
        !status.success() && status.code() == Some(1),
        "lb-agent exits 1 when its source fails: {status}\n{output}"
    );
    assert!(
        output.contains("cannot create a Kubernetes client"),
        "names the failure:\n{output}"
    );
    assert!(!node.socket().exists(), "the socket is removed at exit");
}

/// `lbctl --socket SOCKET ARGS`; fails the test unless it succeeds; its stdout.
fn lbctl(node: &Node, args: &[&str]) -> String {
    let out = std::process::Command::new(&node.bins.lbctl)
        .arg("--socket")
        .arg(node.socket())
        .args(args)
        .env_remove("LB_SOCKET")
        .output()
        .expect("run lbctl");
    assert!(out.status.success(), "lbctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `config view` line of `key` as its words: key, value, source.
fn view_of(node: &Node, key: &str) -> Vec<String> {
    lbctl(node, &["config", "view"])
        .lines()
        .find(|line| line.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("config view lists {key}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Replaces `dir/key` atomically, as the kubelet swaps a ConfigMap's files.
fn write_key(dir: &std::path::Path, key: &str, value: &str) {
    let tmp = dir.join(format!(".{key}.tmp"));
    std::fs::write(&tmp, format!("{value}\n")).expect("write config file");
    std::fs::rename(&tmp, dir.join(key)).expect("replace config file");
}

#[test]
fn two_agents_sharing_a_config_dir_both_apply_an_edit_of_it_live() {
    const KEY: &str = "bpf-lb-external-clusterip";
    let nodes = [Node::up("confdir1"), Node::up("confdir2")];
    let shared = nodes[0].run_dir.join("config");
    let manifests = nodes[0].run_dir.join("manifests");
    std::fs::create_dir_all(&shared).expect("config dir");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    write_key(&shared, KEY, "false");
    // A key of a newer lb: a warning, not a failed start.
    write_key(&shared, "bpf-lb-some-future-option", "true");

    let mut agents: Vec<Process> = nodes
        .iter()
        .map(|node| {
            node.spawn(
                &node.args(&[
                    format!("--source=file:{}", manifests.display()),
                    format!("--config-dir={}", shared.display()),
                ]),
                &[],
            )
        })
        .collect();
    for (node, agent) in nodes.iter().zip(&mut agents) {
        ok(
            agent.wait_until("lb-agent ready", READY_TIMEOUT, || node.ready()),
            "lb-agent ready",
        );
        assert!(
            node.log()
                .contains("ignoring unknown option `bpf-lb-some-future-option`"),
            "the unknown key is a warning:\n{}",
            node.log()
        );
        assert_eq!(view_of(node, KEY), [KEY, "false", "config-dir"]);
    }
    let before: Vec<String> = nodes
        .iter()
        .map(|node| pinned_datapath_config(&node.bpf_root))
        .collect();

    // An edit of the directory (a ConfigMap update, as the kubelet applies it) reaches both.
    let edited = std::time::Instant::now();
    write_key(&shared, KEY, "true");
    for ((node, agent), before) in nodes.iter().zip(&mut agents).zip(&before) {
        ok(
            agent.wait_until("the edit to reach the datapath", DEADLINE, || {
                Ok((pinned_datapath_config(&node.bpf_root) != *before).then_some(()))
            }),
            "the agent applies the edit",
        );
        assert_eq!(view_of(node, KEY), [KEY, "true", "config-dir"]);
    }
    eprintln!(
        "both agents applied the edit {} ms after it",
        edited.elapsed().as_millis()
    );

    // `config set` on one agent persists to the directory, and the other follows.
    let outcome = lbctl(&nodes[0], &["config", "set", KEY, "false"]);
    assert_eq!(
        outcome,
        format!(
            "{KEY} = false: applied live on this node; persisted to {} (agents sharing that \
             directory follow)\n",
            shared.join(KEY).display()
        )
    );
    ok(
        agents[1].wait_until("the other agent to follow config set", DEADLINE, || {
            Ok((pinned_datapath_config(&nodes[1].bpf_root) == before[1]).then_some(()))
        }),
        "the other agent follows",
    );
    assert_eq!(view_of(&nodes[1], KEY), [KEY, "false", "config-dir"]);
    for agent in &mut agents {
        agent.check_running().expect("the agent still runs");
    }
}

#[test]
fn config_set_without_a_config_dir_says_it_is_not_persisted() {
    const KEY: &str = "bpf-lb-external-clusterip";
    let node = Node::up("confset");
    let manifests = node.run_dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    let mut agent = node.spawn(
        &node.args(&[
            format!("--source=file:{}", manifests.display()),
            format!("--{KEY}=false"),
        ]),
        &[],
    );
    ok(
        agent.wait_until("lb-agent ready", READY_TIMEOUT, || node.ready()),
        "lb-agent ready",
    );
    assert_eq!(view_of(&node, KEY), [KEY, "false", "flag"]);
    let outcome = lbctl(&node, &["config", "set", KEY, "true"]);
    assert_eq!(
        outcome,
        format!(
            "{KEY} = true: applied live on this node; NOT persisted: lb-agent runs without \
             --config-dir, so a restart loses it\n"
        )
    );
    assert_eq!(
        view_of(&node, KEY),
        [KEY, "true", "config", "set", "(not", "persisted)"]
    );
}

#[test]
fn a_pin_removed_under_a_running_agent_fails_liveness_and_shows_in_status() {
    let node = Node::up("pinloss");
    let manifests = node.run_dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    let mut agent = node.spawn(
        &node.args(&[format!("--source=file:{}", manifests.display())]),
        &[],
    );
    ok(
        agent.wait_until("lb-agent ready", READY_TIMEOUT, || node.ready()),
        "lb-agent ready",
    );
    assert_eq!(node.get("/healthz").expect("GET /healthz").0, 200);
    let healthy = |node: &Node| {
        let (_, metrics) = node.get("/metrics").expect("GET /metrics");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("lb_datapath_healthy "))
            .map(str::to_owned)
    };
    assert_eq!(healthy(&node).as_deref(), Some("1"));
    // What an uninstall that bypassed the lock, or a stray `rm`, does.
    let pin = node
        .bpf_root
        .join(lb_common::maps::PIN_VERSION)
        .join(lb_common::maps::LB4_SERVICES);
    std::fs::remove_file(&pin).expect("remove a map pin");
    let expected = format!(
        "pin `{}` is gone; restart lb-agent to repair",
        pin.display()
    );
    assert_eq!(
        node.get("/healthz").expect("GET /healthz"),
        (503, format!("not alive: {expected}\n"))
    );
    assert_eq!(node.get("/readyz").expect("GET /readyz").0, 503);
    assert_eq!(healthy(&node).as_deref(), Some("0"));
    let status = std::process::Command::new(&node.bins.lbctl)
        .arg("--socket")
        .arg(node.socket())
        .arg("status")
        .output()
        .expect("run lbctl status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(1), "status fails: {status:?}");
    assert!(
        text.lines()
            .any(|line| line == format!("Datapath:            failed: {expected}")),
        "{text}"
    );
}

/// `bpftool map ARGS… pinned <LB4_BACKENDS of node>`: whether it succeeded.
fn backends_map(node: &Node, verb: &str, key: &[&str]) -> bool {
    let pin = node
        .bpf_root
        .join(lb_common::maps::PIN_VERSION)
        .join(lb_common::maps::LB4_BACKENDS);
    std::process::Command::new("bpftool")
        .args(["map", verb, "pinned"])
        .arg(&pin)
        .args(["key", "hex"])
        .args(key)
        .output()
        .expect("run bpftool")
        .status
        .success()
}

#[test]
fn a_backend_deleted_behind_the_agents_back_is_restored_by_the_periodic_full_sync() {
    let node = Node::up("drift");
    let manifests = node.run_dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    for file in ["service.yaml", "endpointslice.yaml"] {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/a-checkout-two-slices")
            .join(file);
        std::fs::copy(from, manifests.join(file)).expect("copy fixture");
    }
    let mut agent = node.spawn(
        &node.args(&[
            format!("--source=file:{}", manifests.display()),
            "--full-sync-interval=1".to_owned(),
        ]),
        &[],
    );
    ok(
        agent.wait_until("lb-agent ready", READY_TIMEOUT, || node.ready()),
        "lb-agent ready",
    );
    let repairs = |node: &Node| {
        let (_, metrics) = node.get("/metrics").expect("GET /metrics");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("lb_sync_repairs_total "))
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert_eq!(repairs(&node), Some(0));
    // Backend 1 (the key is the u32 id, host order): what a stray `bpftool map delete` does.
    let key = ["01", "00", "00", "00"];
    assert!(backends_map(&node, "lookup", &key), "backend 1 programmed");
    assert!(backends_map(&node, "delete", &key), "delete backend 1");
    assert!(!backends_map(&node, "lookup", &key));
    ok(
        agent.wait_until("the entry repaired", DEADLINE, || {
            Ok((repairs(&node) == Some(1) && backends_map(&node, "lookup", &key)).then_some(()))
        }),
        "the periodic full sync repairs the deleted backend",
    );
    assert!(
        node.log().contains("repaired"),
        "a warning says what was repaired: {}",
        node.log()
    );
}
