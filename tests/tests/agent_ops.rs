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
use lb_tests::kube_api::{FakeApiServer, Kind};

/// Deadline for an agent to load, answer, exit, or apply a change.
const DEADLINE: Duration = Duration::from_secs(30);
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
            .chain(std::iter::once(self.bins.agent.to_string_lossy().into_owned()))
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
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|err| err.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
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
        agent.wait_until("/healthz to answer 200", DEADLINE, || {
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
        agent.wait_until("/readyz to answer 200", RECOVERY, || {
            Ok(node.get("/readyz").ok().filter(|(code, _)| *code == 200))
        }),
        "readiness after the first sync",
    );
    assert_eq!(node.get("/healthz").expect("GET /healthz").0, 200);
}

/// `lb-agent ARGS` with `env`, run to its exit: its status and its output.
fn run_to_exit(node: &Node, args: &[String], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
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
        panic!("{err}:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
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
