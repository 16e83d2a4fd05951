//! The real `lbctl` binary against lb-agent's `api::server` serving in-process on a temporary
//! socket, backed by a small in-test `ApiBackend` with real values. Output is compared with
//! exact expected text.
//!
//! This lives in lb-tests because it needs both crates: the `lbctl` crate must not depend on
//! lb-agent (it builds on stable alone), so the binary is found as the other namespace tests
//! find it, through `lb_tests::agent::binaries` (`LB_BIN_DIR`, or a cargo build). No namespace,
//! no root: only a unix socket under the temporary directory.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use lb_agent::api::server::{self, ApiBackend, BoxError};
use lb_agent::config::{self, AgentConfig, LiveChange};
use lb_agent::datapath::events;
use lb_agent::monitor::DropFanout;
use lb_api::proto::{
    BackendRow, BackendState, ConfigEntry, CtRow, DropEventRecord, MetricsSnapshot, ServiceRow,
    StatusReply,
};
use lb_common::conntrack::{
    CT_F_SEEN_REPLY, CT_REPLY, CT_SERVICE, CtEntry, CtKey4, CtReply, CtService,
};
use lb_common::drop::{DropReason, Hook, SourceFile};
use lb_common::event::{DropEvent, DropEvent6, EVENT_DROP, EVENT_DROP6, tcp_flags};
use lb_testkit::patience::SETTLE_WITHIN;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The agent's state as the test sets it.
struct TestBackend {
    status: Mutex<StatusReply>,
    config: Mutex<AgentConfig>,
    drops: DropFanout,
}

impl ApiBackend for TestBackend {
    fn status(&self) -> StatusReply {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn services(&self) -> Vec<ServiceRow> {
        let backend = |id, address: &str, state| BackendRow {
            id,
            address: address.into(),
            state,
        };
        // Out of order on purpose: the server sorts by id.
        vec![
            ServiceRow {
                id: 3,
                frontend: "10.96.0.10:53/UDP".into(),
                service_type: "ClusterIP".into(),
                name: "default/web".into(),
                flags: Vec::new(),
                backends: vec![
                    backend(4, "10.244.1.42:53/UDP", BackendState::Active),
                    backend(7, "10.244.2.17:53/UDP", BackendState::Terminating),
                ],
            },
            ServiceRow {
                id: 1,
                frontend: "10.96.229.67:80/TCP".into(),
                service_type: "ClusterIP".into(),
                name: "default/web".into(),
                flags: Vec::new(),
                backends: vec![backend(1, "10.112.1.194:80/TCP", BackendState::Active)],
            },
        ]
    }

    fn config_view(&self) -> Vec<ConfigEntry> {
        let config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        config::entries(&config, &config::Sources::default())
    }

    fn config_set(&self, change: LiveChange) -> BoxFuture<'static, Result<String, BoxError>> {
        change.apply(&mut self.config.lock().unwrap_or_else(PoisonError::into_inner));
        let outcome = format!("{} = {}: applied", change.key(), change.value());
        Box::pin(async move { Ok(outcome) })
    }

    fn subscribe_drops(&self) -> broadcast::Receiver<DropEventRecord> {
        self.drops.subscribe()
    }

    fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot::default()
    }

    fn conntrack(&self) -> Result<Vec<CtRow>, String> {
        // From the real datapath's entry types, out of order on purpose: the server sorts.
        let key = |saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16| CtKey4 {
            saddr: u32::from_ne_bytes(saddr),
            daddr: u32::from_ne_bytes(daddr),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto: lb_common::proto::UDP,
            _pad: 0,
            _pad2: 0,
        };
        let service = CtService {
            expires: 1_040,
            kind: CT_SERVICE,
            backend_id: 4,
            rev_nat: 3,
            backend_addr: u32::from_ne_bytes([10, 244, 1, 42]),
            backend_port: 53u16.to_be(),
            flags: CT_F_SEEN_REPLY,
            ..CtService::default()
        };
        let reply = CtReply {
            expires: 1_040,
            kind: CT_REPLY,
            backend_id: 4,
            rev_nat: 3,
            vip: u32::from_ne_bytes([10, 96, 0, 10]),
            vip_port: 53u16.to_be(),
            client_addr: u32::from_ne_bytes([10, 244, 0, 7]),
            client_port: 40_000u16.to_be(),
            flags: CT_F_SEEN_REPLY,
            ..CtReply::default()
        };
        Ok(vec![
            CtRow::new(
                "any",
                &key([10, 244, 1, 42], 53, [10, 244, 0, 7], 40_000),
                &CtEntry::from(reply),
                1_000,
            ),
            CtRow::new(
                "any",
                &key([10, 244, 0, 7], 40_000, [10, 96, 0, 10], 53),
                &CtEntry::from(service),
                1_000,
            ),
        ])
    }
}

/// An API server on a fresh socket; stops it and removes the directory on drop.
struct Agent {
    dir: PathBuf,
    socket: PathBuf,
    backend: Arc<TestBackend>,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Agent {
    fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lbctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The server creates the socket's directory itself.
        let socket = dir.join("run/lb.sock");
        let config = AgentConfig::from_args(
            [
                "lb-agent",
                "--node-name=node-1",
                "--devices=eth0",
                "--pod-devices=lxc*",
                "--socket",
                &socket.display().to_string(),
            ],
            |_| None,
        )
        .expect("agent config");
        let backend = Arc::new(TestBackend {
            status: Mutex::new(StatusReply {
                version: "0.1.0".into(),
                source: "kube".into(),
                node_name: "node-1".into(),
                datapath_loaded: true,
                synced: true,
                services: 2,
                backends: 3,
                devices: vec!["eth0".into()],
                pod_devices: vec!["lxc1".into(), "lxc2".into()],
                last_sync_error: None,
                datapath_error: None,
                ..StatusReply::default()
            }),
            config: Mutex::new(config),
            drops: DropFanout::default(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let shutdown = CancellationToken::new();
        let listener = {
            let _guard = runtime.enter();
            server::bind(&socket).expect("bind api socket")
        };
        let api: Arc<dyn ApiBackend> = backend.clone();
        runtime.spawn(server::serve_listener(listener, api, shutdown.clone()));
        Self {
            dir,
            socket,
            backend,
            shutdown,
            runtime: Some(runtime),
        }
    }

    fn lbctl(&self, args: &[&str]) -> Output {
        lbctl(&self.socket, args)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `lbctl` binary, built once per test run.
fn lbctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| lb_tests::agent::binaries().lbctl)
}

fn lbctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(lbctl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("LB_SOCKET")
        .output()
        .expect("run lbctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("utf-8 stderr")
}

/// Polls `condition` until it holds (at `lb_testkit::wait_until`'s pace, leaving the CPU to
/// the server it waits on), or panics after `SETTLE_WITHIN`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    lb_testkit::wait_until(what, SETTLE_WITHIN, || Ok(condition().then_some(())))
        .unwrap_or_else(|err| panic!("{err}"));
}

#[test]
fn socket_is_a_socket_with_mode_0660() {
    let agent = Agent::start("mode");
    let meta = std::fs::metadata(&agent.socket).expect("stat socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
}

/// `lbctl ARGS` run as uid `nobody` in group 0 (the socket's group, so it may connect): the
/// kernel reports that uid to the agent through `SO_PEERCRED`. The binary is run from a copy
/// in the agent's directory, which anyone may traverse: the build's own path may not be (a
/// checkout under a 0700 directory).
fn lbctl_as_nobody(agent: &Agent, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt as _;
    let bin = agent.dir.join("lbctl");
    if !bin.exists() {
        std::fs::copy(lbctl_bin(), &bin).expect("copy lbctl where nobody may run it");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the copy");
    }
    Command::new(&bin)
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .env_remove("LB_SOCKET")
        .uid(NOBODY)
        .gid(0)
        .output()
        .expect("run lbctl as nobody")
}

/// The uid of `nobody`.
const NOBODY: u32 = 65_534;

#[test]
fn a_peer_that_is_not_root_may_read_but_not_config_set() {
    let agent = Agent::start("peer-cred");
    for read in [&["status"][..], &["config", "view"], &["service", "list"]] {
        let output = lbctl_as_nobody(&agent, read);
        assert!(
            output.status.success(),
            "nobody may run lbctl {read:?}: {}",
            stderr(&output)
        );
    }
    let output = lbctl_as_nobody(
        &agent,
        &["config", "set", "bpf-lb-external-clusterip", "true"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!(
            "lbctl: permission denied: `config set bpf-lb-external-clusterip` changes lb-agent's \
             state and needs root or the agent's user (uid 0); you are uid {NOBODY}. Reading \
             (status, service list, config view, monitor) needs no privilege\n"
        )
    );
    let view = stdout(&agent.lbctl(&["config", "view"]));
    assert!(
        view.lines()
            .any(|line| line.starts_with("bpf-lb-external-clusterip")
                && line.split_whitespace().nth(1) == Some("false")),
        "unchanged: {view}"
    );
    // Root may.
    let output = agent.lbctl(&["config", "set", "bpf-lb-external-clusterip", "true"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
}

#[test]
fn service_list_prints_ciliums_table_sorted_by_id() {
    let agent = Agent::start("service-list");
    let output = agent.lbctl(&["service", "list"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    // Column widths (tabwriter minwidth 5, padding 3): ID 5; Frontend 19+3 = 22;
    // Service Type 12+3 = 15; Backend last, with no trailing spaces.
    assert_eq!(
        stdout(&output),
        concat!(
            "ID   Frontend              Service Type   Backend\n",
            "1    10.96.229.67:80/TCP   ClusterIP      1 => 10.112.1.194:80/TCP (active)\n",
            "3    10.96.0.10:53/UDP     ClusterIP      4 => 10.244.1.42:53/UDP (active)\n",
            "                                          7 => 10.244.2.17:53/UDP (terminating)\n",
        )
    );
    assert_eq!(stderr(&output), "");
}

#[test]
fn service_list_json_carries_ids_and_states() {
    let agent = Agent::start("service-json");
    let output = agent.lbctl(&["service", "list", "-o", "json"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let services: Vec<ServiceRow> = serde_json::from_str(&stdout(&output)).expect("json");
    let ids: Vec<u32> = services.iter().map(|service| service.id).collect();
    assert_eq!(ids, [1, 3]);
    assert_eq!(services[1].backends[1].id, 7);
    assert_eq!(services[1].backends[1].state, BackendState::Terminating);
}

#[test]
fn service_get_prints_one_service_and_fails_for_an_unknown_id() {
    let agent = Agent::start("service-get");
    let output = agent.lbctl(&["service", "get", "3"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        concat!(
            "ID   Frontend            Service Type   Backend\n",
            "3    10.96.0.10:53/UDP   ClusterIP      4 => 10.244.1.42:53/UDP (active)\n",
            "                                        7 => 10.244.2.17:53/UDP (terminating)\n",
        )
    );
    let output = agent.lbctl(&["service", "get", "1", "-o", "json"]);
    let services: Vec<ServiceRow> = serde_json::from_str(&stdout(&output)).expect("json");
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].frontend, "10.96.229.67:80/TCP");

    let output = agent.lbctl(&["service", "get", "2"]);
    assert_eq!(output.status.code(), Some(1), "an id no service has");
    assert_eq!(stdout(&output), "");
    assert!(
        stderr(&output).contains("no service with id 2"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bpf_ct_list_prints_one_line_per_entry_and_json() {
    let agent = Agent::start("ct-list");
    let output = agent.lbctl(&["bpf", "ct", "list"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "UDP SERVICE 10.244.0.7:40000 -> 10.96.0.10:53 expires=40 flags=[seen-reply] rev_nat=3 \
         backend_id=4 backend=10.244.1.42:53\n\
         UDP REPLY 10.244.1.42:53 -> 10.244.0.7:40000 expires=40 flags=[seen-reply] rev_nat=3 \
         backend_id=4 vip=10.96.0.10:53 client=10.244.0.7:40000\n"
    );
    let output = agent.lbctl(&["bpf", "ct", "list", "-o", "json"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let rows: Vec<CtRow> = serde_json::from_str(&stdout(&output)).expect("json");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].direction, "service");
    assert_eq!(rows[0].backend.as_deref(), Some("10.244.1.42:53"));
}

#[test]
fn config_view_lists_every_option_sorted() {
    let agent = Agent::start("config-view");
    let output = agent.lbctl(&["config", "view"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let socket = agent.socket.display().to_string();
    let expected = [
        ("bpf-ct-global-any-max", "262144"),
        ("bpf-ct-max-entries", "262144"),
        ("bpf-ct-timeout-regular-any", "60"),
        ("bpf-ct-timeout-regular-tcp", "21600"),
        ("bpf-ct-timeout-regular-tcp-fin", "10"),
        ("bpf-ct-timeout-regular-tcp-syn", "60"),
        ("bpf-ct-timeout-service-any", "60"),
        ("bpf-ct-timeout-service-tcp", "21600"),
        ("bpf-ct-timeout-service-tcp-grace", "60"),
        ("bpf-lb-algorithm", "random"),
        ("bpf-lb-algorithm-annotation", "false"),
        ("bpf-lb-external-clusterip", "false"),
        ("bpf-lb-maglev-hash-seed", "JLfvgnHc2kaSUFaI"),
        ("bpf-lb-maglev-table-size", "16381"),
        ("bpf-lb-map-max", "131072"),
        ("bpf-lb-sock", "false"),
        ("bpf-root", "/sys/fs/bpf/lb"),
        ("cgroup-root", "/sys/fs/cgroup"),
        ("config-dir", ""),
        ("conntrack-gc-interval", "300"),
        ("devices", "eth0"),
        ("full-sync-interval", "60"),
        ("log-level", "info"),
        ("metrics-address", "127.0.0.1:9963"),
        ("node-ip", ""),
        ("node-ipv6", ""),
        ("node-name", "node-1"),
        ("node-port-range", "30000-32767"),
        ("node-zone", ""),
        ("pod-devices", "lxc*"),
        ("service-no-backend-response", "reject"),
        ("snat-port-range", "61000-65535"),
        ("socket", socket.as_str()),
        ("source", "kube"),
    ];
    // The longest key, `bpf-ct-timeout-service-tcp-grace`, is 32 characters; padding 3. Values are
    // as wide as the longest (the socket's path) plus 3. The test's backend has no sources.
    let width = expected
        .iter()
        .map(|(_, value)| value.len())
        .max()
        .unwrap_or(0)
        + 3;
    let expected = expected
        .iter()
        .map(|(key, value)| format!("{key:<35}{value:<width$}default\n"))
        .collect::<String>();
    assert_eq!(stdout(&output), expected);
}

#[test]
fn config_set_changes_a_live_option() {
    let agent = Agent::start("config-set");
    let output = agent.lbctl(&["config", "set", "bpf-lb-external-clusterip", "true"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "bpf-lb-external-clusterip = true: applied\n"
    );
    let view = stdout(&agent.lbctl(&["config", "view"]));
    assert!(
        view.lines().any(|line| line.split_whitespace().eq([
            "bpf-lb-external-clusterip",
            "true",
            "default"
        ])),
        "{view}"
    );
}

#[test]
fn config_set_rejects_a_bad_value_with_exit_2() {
    let agent = Agent::start("config-set-bad");
    let output = agent.lbctl(&["config", "set", "bpf-lb-external-clusterip", "maybe"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "lbctl: invalid value `maybe` for `bpf-lb-external-clusterip`: expected `true` or `false`\n"
    );
    let view = stdout(&agent.lbctl(&["config", "view"]));
    assert!(
        view.lines()
            .any(|line| line.starts_with("bpf-lb-external-clusterip")
                && line.split_whitespace().nth(1) == Some("false")),
        "{view}"
    );
}

#[test]
fn config_set_rejects_an_unknown_key_with_exit_2() {
    let agent = Agent::start("config-set-unknown");
    let output = agent.lbctl(&["config", "set", "bpf-lb-external-cluster-ip", "true"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "lbctl: unknown option `bpf-lb-external-cluster-ip`; known options: source, devices, \
         pod-devices, node-name, node-ip, node-ipv6, node-zone, bpf-root, socket, config-dir, \
         metrics-address, bpf-lb-external-clusterip, service-no-backend-response, bpf-lb-sock, cgroup-root, \
         bpf-ct-max-entries, bpf-ct-global-any-max, bpf-ct-timeout-regular-tcp, \
         bpf-ct-timeout-regular-tcp-syn, bpf-ct-timeout-regular-tcp-fin, bpf-ct-timeout-regular-any, \
         bpf-ct-timeout-service-tcp, bpf-ct-timeout-service-tcp-grace, bpf-ct-timeout-service-any, \
         conntrack-gc-interval, full-sync-interval, bpf-lb-algorithm, bpf-lb-algorithm-annotation, \
         bpf-lb-maglev-table-size, bpf-lb-maglev-hash-seed, bpf-lb-map-max, snat-port-range, \
         node-port-range, log-level\n"
    );
}

#[test]
fn config_set_rejects_an_option_that_is_not_live() {
    let agent = Agent::start("config-set-not-live");
    let output = agent.lbctl(&["config", "set", "devices", "eth1"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "lbctl: option `devices` cannot change at runtime; restart lb-agent with --devices\n"
    );
}

#[test]
fn status_exits_0_when_ready_and_1_with_a_reason_when_not() {
    let agent = Agent::start("status");
    let output = agent.lbctl(&["status"]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        concat!(
            "Version:             0.1.0\n",
            "Node:                node-1\n",
            "Source:              kube\n",
            "Datapath:            loaded\n",
            "Sync:                ok\n",
            "Last sync:           never\n",
            "Services:            2\n",
            "Backends:            3\n",
            "Malformed objects:   0\n",
            "Devices:             eth0\n",
            "Pod devices:         lxc1, lxc2\n",
        )
    );
    let output = agent.lbctl(&["status", "-o", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let json: StatusReply = serde_json::from_str(&stdout(&output)).expect("status -o json");
    assert_eq!(json.node_name, "node-1");
    assert_eq!(json.pod_devices, ["lxc1", "lxc2"]);

    {
        let mut status = agent
            .backend
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        status.synced = false;
        status.last_sync_error = Some("map `LB4_SERVICES` is full (65536 entries)".into());
    }
    let output = agent.lbctl(&["status"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains(
            "\nSync:                failed: map `LB4_SERVICES` is full (65536 entries)\n"
        ),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        stderr(&output),
        "lbctl: lb-agent is not ready: first sync not done (last sync error: map `LB4_SERVICES` is full (65536 entries))\n"
    );
}

#[test]
fn no_agent_is_exit_2_naming_the_socket() {
    let socket = std::env::temp_dir().join(format!("lbctl-none-{}/lb.sock", std::process::id()));
    let output = lbctl(&socket, &["status"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        format!(
            "lbctl: cannot connect to lb-agent at {}: No such file or directory (os error 2)\n",
            socket.display()
        )
    );
}

/// A datapath drop event (network byte order).
fn drop_event(reason: DropReason, hook: Hook, line: u16, flags: u8, flow_hash: u32) -> DropEvent {
    DropEvent {
        kind: EVENT_DROP,
        reason: reason as u8,
        file: SourceFile::Policy as u8,
        hook: hook as u8,
        line,
        tcp_flags: flags,
        proto: lb_common::proto::TCP,
        ifindex: 2,
        flow_hash,
        saddr: u32::from_ne_bytes([192, 168, 56, 10]),
        daddr: u32::from_ne_bytes([10, 96, 229, 67]),
        sport: 33802u16.to_be(),
        dport: 80u16.to_be(),
        len: 60,
    }
}

/// Runs `lbctl monitor` with `extra` arguments, publishes two events once it has
/// subscribed, and returns the first two lines it prints.
fn monitor_two_lines(agent: &Agent, extra: &[&str]) -> Vec<String> {
    monitor_lines(
        agent,
        extra,
        [
            DropEventRecord::from(&drop_event(
                DropReason::IsClusterIp,
                Hook::FromNetdev,
                42,
                tcp_flags::SYN,
                0,
            )),
            DropEventRecord::from(&drop_event(
                DropReason::NoService,
                Hook::FromPod,
                57,
                tcp_flags::SYN | tcp_flags::ACK,
                0x7558_de48,
            )),
        ],
    )
}

/// Runs `lbctl monitor` with `extra` arguments, publishes `events` once it has subscribed,
/// and returns the first two lines it prints.
fn monitor_lines(agent: &Agent, extra: &[&str], events: [DropEventRecord; 2]) -> Vec<String> {
    let mut child = Command::new(lbctl_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["monitor", "--type", "drop"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lbctl monitor");
    wait_until("lbctl monitor to subscribe", || {
        agent.backend.drops.subscribers() == 1
    });
    for event in events {
        agent.backend.drops.publish(event);
    }

    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().take(2) {
            if tx.send(line.expect("read line")).is_err() {
                return;
            }
        }
    });
    let lines: Vec<String> = (0..2)
        .map(|_| {
            rx.recv_timeout(SETTLE_WITHIN)
                .expect("lbctl monitor prints a line per event")
        })
        .collect();
    child.kill().expect("stop lbctl monitor");
    let _ = child.wait();
    lines
}

#[test]
fn monitor_prints_ciliums_drop_lines() {
    let agent = Agent::start("monitor");
    assert_eq!(
        monitor_two_lines(&agent, &[]),
        [
            "xx drop (Is a ClusterIP) flow 0x0 to endpoint 0, file policy.rs line 42, , identity world->unknown: 192.168.56.10:33802 -> 10.96.229.67:80 tcp SYN",
            "xx drop (Service backend not found) flow 0x7558de48 to endpoint 0, file policy.rs line 57, , identity unknown->unknown: 192.168.56.10:33802 -> 10.96.229.67:80 tcp SYN, ACK",
        ]
    );
    // The server notices the client is gone.
    wait_until("the monitor stream to end", || {
        agent.backend.drops.subscribers() == 0
    });
}

#[test]
fn monitor_json_prints_one_object_per_event() {
    let agent = Agent::start("monitor-json");
    assert_eq!(
        monitor_two_lines(&agent, &["-o", "json"]),
        [
            r#"{"type":"drop","reason":174,"message":"Is a ClusterIP","hook":"from-netdev","file":"policy.rs","line":42,"flow":0,"ifindex":2,"src":"192.168.56.10:33802","dst":"10.96.229.67:80","proto":"tcp","tcp_flags":"SYN","len":60}"#,
            r#"{"type":"drop","reason":158,"message":"Service backend not found","hook":"from-pod","file":"policy.rs","line":57,"flow":1968758344,"ifindex":2,"src":"192.168.56.10:33802","dst":"10.96.229.67:80","proto":"tcp","tcp_flags":"SYN, ACK","len":60}"#,
        ]
    );
}

#[test]
fn monitor_prints_ipv6_drops_with_bracketed_addresses() {
    // As the event reader hands them on: a ring-buffer record decoded by its kind byte.
    let addr = |text: &str| {
        let ip: std::net::Ipv6Addr = text.parse().expect("ipv6");
        lb_common::addr6_from_octets(ip.octets())
    };
    let v4 = drop_event(
        DropReason::IsClusterIp,
        Hook::FromNetdev,
        42,
        tcp_flags::SYN,
        0,
    );
    let mut bytes = vec![0u8; std::mem::size_of::<DropEvent6>()];
    let event6 = DropEvent6 {
        kind: EVENT_DROP6,
        reason: v4.reason,
        file: v4.file,
        hook: v4.hook,
        line: 42,
        tcp_flags: tcp_flags::SYN,
        proto: lb_common::proto::TCP,
        ifindex: 2,
        flow_hash: 0,
        saddr: addr("fd00:56::10"),
        daddr: addr("fd00:10:96::e5:43"),
        sport: 33802u16.to_be(),
        dport: 80u16.to_be(),
        len: 80,
    };
    // SAFETY: DropEvent6 is plain data of exactly this size.
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<DropEvent6>(), event6) };
    let decoded = events::parse(&bytes).expect("an IPv6 drop record");
    let agent = Agent::start("monitor-v6");
    let lines = monitor_lines(
        &agent,
        &[],
        [DropEventRecord::from(&decoded), DropEventRecord::from(&v4)],
    );
    assert_eq!(
        lines,
        [
            "xx drop (Is a ClusterIP) flow 0x0 to endpoint 0, file policy.rs line 42, , identity world->unknown: [fd00:56::10]:33802 -> [fd00:10:96::e5:43]:80 tcp SYN",
            "xx drop (Is a ClusterIP) flow 0x0 to endpoint 0, file policy.rs line 42, , identity world->unknown: 192.168.56.10:33802 -> 10.96.229.67:80 tcp SYN",
        ]
    );
}

#[test]
fn a_closed_stdout_is_success() {
    let agent = Agent::start("broken-pipe");
    let mut child = Command::new(lbctl_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["service", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lbctl");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait lbctl");
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output), "");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let agent = Agent::start("stale");
    let err = {
        let _guard = agent.runtime.as_ref().expect("runtime").enter();
        server::bind(&agent.socket).expect_err("socket in use")
    };
    assert_eq!(
        err.to_string(),
        format!(
            "another lb-agent is serving `{}`; stop it or choose another --socket",
            agent.socket.display()
        )
    );
    let stale = agent.dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind stale socket"));
    let _guard = agent.runtime.as_ref().expect("runtime").enter();
    server::bind(&stale).expect("replace a stale socket");
}
