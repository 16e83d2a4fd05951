//! lb's container image run for real: `cargo xtask image` builds it (podman, the Dockerfile, a
//! debootstrapped Debian 12 base cached by its recipe), and podman runs the DaemonSet's pod
//! from it on a test node, as the kubelet would (`lb_tests::container` reads the manifest:
//! capabilities only, not privileged; the node's network; the host's /sys/fs/bpf; the
//! ConfigMap as files). The test shows that
//!
//! - the init container's command runs in the image;
//! - the agent starts with exactly the DaemonSet's capabilities (its effective, permitted and
//!   bounding sets are those and no others), and fails to start without any one of them (so
//!   the manifest asks for nothing it does not need);
//! - traffic to a ClusterIP reaches both backends, and `lbctl` answers through `podman exec`
//!   (`service list`, `bpf ct list`);
//! - the container stopped with the pod's grace period and replaced by a new one, as the
//!   kubelet restarts a pod, breaks no connection;
//! - `lb-agent --uninstall` in the same image, with the same capabilities, removes lb.
//!
//! The node is `lb_tests::topology`'s, its network namespace the pod's host network: the
//! agent's `--devices=eth0` is the node's external interface and `--pod-devices` matches the
//! pods' `lxc-*`, so traffic never leaves the test's namespaces. The test replaces two of the
//! DaemonSet's args: `--source` (the file source on a directory the test writes, as there is no
//! API server) and `--bpf-root` (a directory of the test's own on the host's bpffs).
//!
//! The image comes from `LB_IMAGE` when set; otherwise `cargo xtask image --bin-dir` packs the
//! binaries the other tests use (`lb_tests::agent::binaries`) under a tag of this run, removed
//! at the end. Podman reads lb-testkit's containers.conf (runc, no default rlimits).
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lb_testkit::cgroup::TestCgroup;
use lb_testkit::podman::{self, Container};
use lb_testkit::{BPF_ROOT, ok, wait_until};
use lb_tests::container::{self, Deploy};
use lb_tests::manifests::{Manifest, Port, endpoint};
use lb_tests::topology::{BACKEND_IPS, HTTP_PORT, NODE_IP, PREFIX, Topology};
use lb_tests::traffic::{Client, get_once};

/// The ClusterIP of the test's Service.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
/// The Service's port.
const PORT: u16 = 80;
/// Long-lived connections kept open across the restart.
const KEPT_CONNECTIONS: usize = 2;
/// Deadline for the agent to be ready, a container to exit, traffic to progress.
const DEADLINE: Duration = Duration::from_secs(60);
/// Where the DaemonSet mounts the run directory (hostPath volume `run`).
const RUN_VOLUME: &str = "run";
/// The DaemonSet's volume with the host's cgroup hierarchy (for `bpf-lb-sock`).
const CGROUP_VOLUME: &str = "cgroup";
/// Where the test's manifests are inside the container, for `--source`.
const MANIFESTS_IN_CONTAINER: &str = "/etc/lb/manifests";

/// The image under test; a tag this run made is removed on drop.
struct Image {
    tag: String,
    made_here: bool,
}

impl Image {
    /// `LB_IMAGE`, or `cargo xtask image` of the binaries in `bin_dir`.
    fn get(bin_dir: &Path) -> Self {
        if let Some(tag) = std::env::var_os("LB_IMAGE") {
            return Self {
                tag: tag.to_string_lossy().into_owned(),
                made_here: false,
            };
        }
        let tag = format!("localhost/lb:test-{}", std::process::id());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["run", "--quiet", "-p", "xtask", "--", "image", "--bin-dir"])
            .arg(bin_dir)
            .args(["--tag", &tag])
            .current_dir(workspace)
            .output()
            .expect("run cargo xtask image");
        assert!(
            out.status.success(),
            "cargo xtask image failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            tag,
            "cargo xtask image prints the tag it built"
        );
        Self {
            tag,
            made_here: true,
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.made_here {
            let _ = podman::exec(&["rmi", "--force", &self.tag]);
        }
    }
}

/// The DaemonSet's pod on the test's node: the manifests, what the node answers for the
/// kubelet, the image, and the test's bpf root and directories.
struct Pod<'a> {
    deploy: Deploy,
    node: container::Node,
    image: &'a Image,
    bpf_root: PathBuf,
    prefix: String,
    /// Stands in for the host's cgroup hierarchy (volume `cgroup`): the socket programs the
    /// ConfigMap turns on attach here, never to the machine's own root cgroup. Declared last,
    /// so it is removed after everything that used it.
    _cgroup: TestCgroup,
}

impl<'a> Pod<'a> {
    fn new(topology: &Topology, image: &'a Image) -> Self {
        let deploy = Deploy::load();
        let dir = topology.dir();
        deploy.write_config_map(&dir.join("config"));
        let prefix = format!("{PREFIX}image-{}", std::process::id());
        let cgroup = ok(TestCgroup::create("image"), "create the test cgroup");
        Self {
            node: container::Node {
                netns: topology.node.path(),
                name: "node".to_owned(),
                host_ip: NODE_IP,
                host_paths: BTreeMap::from([
                    (RUN_VOLUME.to_owned(), dir.join("run")),
                    (CGROUP_VOLUME.to_owned(), cgroup.path().to_owned()),
                ]),
                config_map_dir: dir.join("config"),
            },
            deploy,
            image,
            bpf_root: Path::new(BPF_ROOT).join(&prefix),
            prefix,
            _cgroup: cgroup,
        }
    }

    /// The agent container's `podman run` arguments, image and args included, with the
    /// manifests directory mounted for the file source and `extra` args appended.
    fn agent_command(&self, manifests: &Path, extra: &[&str]) -> Vec<String> {
        let agent = self.deploy.agent();
        let mut out = container::run_args(self.deploy.pod(), agent, &self.node);
        out.push(format!(
            "--volume={}:{MANIFESTS_IN_CONTAINER}:ro",
            manifests.display()
        ));
        out.push(self.image.tag.clone());
        for arg in container::args(agent, &self.node) {
            out.push(if arg.starts_with("--source=") {
                format!("--source=file:{MANIFESTS_IN_CONTAINER}")
            } else if arg.starts_with("--bpf-root=") {
                format!("--bpf-root={}", self.bpf_root.display())
            } else {
                arg
            });
        }
        out.extend(extra.iter().map(|arg| (*arg).to_owned()));
        out
    }

    /// `podman run --detach --name NAME ARGS`: the container, guarded.
    fn run_detached(&self, name: &str, args: &[String]) -> Container {
        let container = Container::named(name);
        let mut full = vec!["run", "--detach", "--name", name];
        full.extend(args.iter().map(String::as_str));
        ok(podman::run(&full), "podman run");
        container
    }

    /// Runs `args` in a container to its exit: (exit code, output).
    fn run_to_exit(&self, name: &str, args: &[String]) -> (i32, String) {
        let container = self.run_detached(name, args);
        let code = ok(
            wait_until(&format!("{name} to exit"), DEADLINE, || {
                let (status, code) = container.state().map_err(|err| err.to_string())?;
                Ok((status == "exited").then_some(code))
            }),
            "the container exits",
        );
        (code, container.logs(1000))
    }

    /// Starts the agent's container and waits until `lbctl status` passes in it and the
    /// readiness probe's endpoint answers 200 where the kubelet probes it.
    fn start_agent(&self, name: &str, manifests: &Path) -> Container {
        let container = self.run_detached(name, &self.agent_command(manifests, &[]));
        ok(
            wait_until("the agent in its container to be ready", DEADLINE, || {
                let (status, code) = container.state().map_err(|err| err.to_string())?;
                assert_eq!(
                    status,
                    "running",
                    "the agent's container stopped (exit code {code}):\n{}",
                    container.logs(30)
                );
                let lbctl = container
                    .exec(&["lbctl", "status"])
                    .map_err(|err| err.to_string())?;
                if !lbctl.success {
                    return Err(lbctl.stderr);
                }
                let ready = self.probe("/readyz")?;
                Ok((ready == 200).then_some(()))
            })
            // A container that never gets ready usually says why in its log.
            .map_err(|err| {
                lb_testkit::Error::Unexpected(format!(
                    "{err}\n--- the container's last lines ---\n{}",
                    container.logs(30)
                ))
            }),
            "agent ready",
        );
        container
    }

    /// The status code of a GET on the agent's metrics port at the node's address, from the
    /// node's namespace: where the kubelet's probes go.
    fn probe(&self, path: &str) -> Result<u16, String> {
        let ns = self.node.netns.clone();
        let url = format!("http://{NODE_IP}:9963{path}");
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args([
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                lb_testkit::patience::ANSWER_WITHIN_SECS,
            ])
            .arg(&url)
            .output()
            .map_err(|err| err.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("GET {url}: {out:?}"))
    }

    /// Stops the container as the kubelet stops a pod (SIGTERM, the pod's grace period, then
    /// SIGKILL) and returns the agent's exit code.
    fn stop(&self, container: &Container) -> i32 {
        let grace = self.deploy.grace_seconds().to_string();
        ok(
            podman::run(&["stop", "--time", &grace, container.name()]),
            "podman stop",
        );
        let (status, code) = ok(container.state(), "inspect the stopped container");
        assert_eq!(status, "exited", "{}", container.logs(20));
        code
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        // Unpinning the links detaches the programs; the maps go with their last reference.
        if let Err(err) = std::fs::remove_dir_all(&self.bpf_root)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cannot remove {}: {err}", self.bpf_root.display());
        }
    }
}

/// Writes a ClusterIP Service on both backends' HTTP port into `dir`.
fn write_service(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the manifests directory");
    let yaml = Manifest::new("web", VIP)
        .port(Port::tcp("", PORT, HTTP_PORT))
        .endpoints(BACKEND_IPS.iter().map(|ip| endpoint(*ip, "node", true)))
        .to_yaml();
    std::fs::write(dir.join("web.yaml"), yaml).expect("write the Service");
}

#[test]
fn the_image_runs_the_daemon_set_pod_on_capabilities_alone_through_traffic_a_restart_and_uninstall()
{
    ok(lb_testkit::ensure_bpffs(), "mount bpffs");
    let topology = Topology::new("image");
    let bins = lb_tests::agent::binaries();
    let image = Image::get(bins.agent.parent().expect("the binaries' directory"));
    let pod = Pod::new(&topology, &image);
    let manifests = topology.dir().join("manifests");
    write_service(&manifests);
    let vip = SocketAddrV4::new(VIP, PORT);

    // The init containers, privileged as the manifest says: bpffs is mounted already, so
    // their command only checks.
    for init in pod.deploy.pod().init_containers.iter().flatten() {
        let mut args = container::run_args(pod.deploy.pod(), init, &pod.node);
        args.push(image.tag.clone());
        args.extend(container::args(init, &pod.node));
        let (code, logs) = pod.run_to_exit(&format!("{}-init", pod.prefix), &args);
        assert_eq!(code, 0, "init container {}: {logs}", init.name);
    }

    // Each capability the manifest adds is needed: without it the agent cannot start.
    let agent_args = pod.agent_command(&manifests, &[]);
    for cap in container::added_capabilities(pod.deploy.agent()) {
        let flag = format!("--cap-add=CAP_{cap}");
        assert!(agent_args.contains(&flag), "{flag} in {agent_args:?}");
        let without: Vec<String> = agent_args.iter().filter(|a| **a != flag).cloned().collect();
        let (code, logs) = pod.run_to_exit(&format!("{}-no-{cap}", pod.prefix), &without);
        assert_ne!(code, 0, "the agent started without CAP_{cap}:\n{logs}");
        // The agent's preflight names what is missing before it touches anything.
        assert!(
            logs.contains("lb-agent lacks") && logs.contains(&format!("CAP_{cap}")),
            "without CAP_{cap} the agent fails naming the capability:\n{logs}"
        );
        let error = logs.lines().find(|l| l.contains("ERROR")).unwrap_or("?");
        eprintln!(
            "without CAP_{cap}: {}",
            error.chars().take(240).collect::<String>()
        );
        let _ = std::fs::remove_dir_all(&pod.bpf_root);
    }

    // The agent as the DaemonSet runs it, with exactly its capabilities.
    let agent = pod.start_agent(&format!("{}-agent", pod.prefix), &manifests);
    let status = agent
        .exec(&["cat", "/proc/1/status"])
        .and_then(|out| out.into_stdout());
    let status = ok(status, "the agent's /proc status");
    let expected = container::capability_mask(&container::added_capabilities(pod.deploy.agent()));
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let mask = status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{set}:")))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or_else(|| panic!("{set} in {status}"));
        assert_eq!(
            mask, expected,
            "{set} of the agent: {mask:#x}, the manifest's capabilities {expected:#x}"
        );
    }
    let list = agent
        .exec(&["lbctl", "service", "list", "-o", "json"])
        .and_then(|out| out.into_stdout());
    let list: serde_json::Value =
        serde_json::from_str(&ok(list, "lbctl service list through podman exec"))
            .expect("service list is JSON");
    let frontend = format!("{VIP}:{PORT}/TCP");
    let row = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|row| row["frontend"] == frontend.as_str())
        .unwrap_or_else(|| panic!("{frontend} programmed: {list}"));
    assert_eq!(
        row["backends"].as_array().map(Vec::len),
        Some(2),
        "two backends: {row}"
    );
    assert_eq!(pod.probe("/healthz"), Ok(200), "liveness");

    let client = Client::start(&topology.client.ns, vip, KEPT_CONNECTIONS);
    client.wait_progress(
        "traffic through the ClusterIP",
        20,
        2 * KEPT_CONNECTIONS as u64,
        DEADLINE,
    );
    for ip in BACKEND_IPS {
        assert!(
            client.seen().by_pod.get(&ip).is_some_and(|n| *n > 0),
            "{ip} answered: {:?}",
            client.seen()
        );
    }

    // The conntrack listing reads the datapath's clock, which the agent opens through a pin:
    // by id it would need CAP_SYS_ADMIN.
    let ct = agent
        .exec(&["lbctl", "bpf", "ct", "list"])
        .and_then(|out| out.into_stdout());
    let ct = ok(ct, "lbctl bpf ct list through podman exec");
    assert!(
        ct.lines()
            .any(|line| line.starts_with("TCP SERVICE") && line.contains(&format!("-> {vip} "))),
        "the client's connections to {vip} are in conntrack:\n{ct}"
    );

    // A restart as the kubelet does it: stop within the grace period, a new container.
    let code = pod.stop(&agent);
    assert_eq!(code, 0, "the agent exits cleanly on SIGTERM");
    drop(agent);
    client.wait_progress(
        "traffic while no agent runs",
        5,
        KEPT_CONNECTIONS as u64,
        DEADLINE,
    );
    let agent = pod.start_agent(&format!("{}-agent", pod.prefix), &manifests);
    client.wait_progress(
        "traffic after the restart",
        10,
        KEPT_CONNECTIONS as u64,
        DEADLINE,
    );
    client.assert_no_failures("across the restart");
    let seen = client.stop();
    eprintln!(
        "restart in the container: {} new connections and {} exchanges on {KEPT_CONNECTIONS} \
         kept connections, none failed",
        seen.new_ok, seen.kept_ok
    );

    // Uninstall, from the same image with the same capabilities, once the agent is gone.
    assert_eq!(pod.stop(&agent), 0, "the agent exits cleanly on SIGTERM");
    drop(agent);
    let uninstall = pod.agent_command(&manifests, &["--uninstall"]);
    let (code, logs) = pod.run_to_exit(&format!("{}-uninstall", pod.prefix), &uninstall);
    assert_eq!(code, 0, "lb-agent --uninstall:\n{logs}");
    assert!(
        !pod.bpf_root.exists(),
        "{} is gone after uninstall",
        pod.bpf_root.display()
    );
    let untranslated = ok(
        topology.client.ns.within(move || get_once(vip)),
        "enter the client pod",
    );
    assert!(
        untranslated.is_err(),
        "the ClusterIP no longer answers once lb is uninstalled: {untranslated:?}"
    );
    for ip in BACKEND_IPS {
        let to = SocketAddrV4::new(ip, HTTP_PORT);
        let answered = ok(
            topology.client.ns.within(move || get_once(to)),
            "enter the client pod",
        );
        assert_eq!(answered.ok(), Some(ip), "pod address {ip} still answers");
    }
}
