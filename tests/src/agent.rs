//! lb-agent as a process for namespace tests: the binaries ([`binaries`]) and an agent on a
//! [`Topology`]'s node with the file source on a directory the test writes ([`start`]).
//!
//! The agent is `lb_lab::Agent` (stopped, and its bpffs pins removed, on drop); this module only
//! chooses names that cannot clash with the lab's or another test's.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lb_lab::{Agent, AgentOptions, Binaries};
use lb_testkit::BPF_ROOT;

use crate::topology::{NODE_DEV, NODE_IP, POD_DEVICES, PREFIX, Topology};

/// How long an agent gets to load the datapath and finish its first sync.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The binaries `lb-agent` and `lbctl`: `LB_BIN_DIR`, or a fresh `cargo build -p lb-agent -p
/// lbctl` of this workspace (quick when nothing changed).
pub fn binaries() -> Binaries {
    let dir = match std::env::var_os("LB_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("tests/ has a parent")
                .to_owned();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "lb-agent", "-p", "lbctl", "--bins"])
                .current_dir(&workspace)
                .status()
                .expect("run cargo build -p lb-agent -p lbctl --bins");
            assert!(
                status.success(),
                "cargo build -p lb-agent -p lbctl --bins failed: {status}"
            );
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace.join("target"), PathBuf::from);
            target.join("debug")
        }
    };
    Binaries::in_dir(&dir).unwrap_or_else(|err| panic!("{err}"))
}

/// Starts lb-agent on `topology`'s node for test `test`: `--devices eth0`, `--pod-devices
/// lxc-*`, `--source file:MANIFESTS`, pins under `/sys/fs/bpf/lbtr-<test>-<pid>`; waits until
/// `lbctl status` says it is ready.
pub fn start(topology: &Topology, test: &str, manifests: &std::path::Path) -> Agent {
    start_with_config(topology, test, manifests, &[])
}

/// [`start`], with further options (`key`, `value`) written to the agent's `--config-dir`
/// before it starts, as a ConfigMap would hold them.
pub fn start_with_config(
    topology: &Topology,
    test: &str,
    manifests: &std::path::Path,
    config: &[(&str, &str)],
) -> Agent {
    let config_dir = topology.dir().join("agent").join("node").join("config");
    std::fs::create_dir_all(&config_dir).expect("create the agent's config directory");
    for (key, value) in config {
        std::fs::write(config_dir.join(key), format!("{value}\n")).expect("write an option");
    }
    let mut agent = Agent::start_with(
        &topology.node,
        &binaries(),
        &options(topology, test, manifests),
    )
    .unwrap_or_else(|err| panic!("start lb-agent: {err}"));
    agent
        .wait_ready(READY_TIMEOUT)
        .unwrap_or_else(|err| panic!("lb-agent ready: {err}"));
    agent
}

/// Starts the next agent process after `agent.stop()`, with the options [`start`] gave the
/// first (and the same config directory); waits until it is ready.
pub fn start_again(
    agent: &mut Agent,
    topology: &Topology,
    test: &str,
    manifests: &std::path::Path,
) {
    agent
        .start_again(
            &topology.node,
            &binaries(),
            &options(topology, test, manifests),
        )
        .unwrap_or_else(|err| panic!("restart lb-agent: {err}"));
    agent
        .wait_ready(READY_TIMEOUT)
        .unwrap_or_else(|err| panic!("restarted lb-agent ready: {err}"));
}

/// How [`start`] runs the agent of test `test`.
fn options(topology: &Topology, test: &str, manifests: &std::path::Path) -> AgentOptions {
    AgentOptions {
        node: "node".to_owned(),
        node_ip: NODE_IP,
        devices: NODE_DEV.to_owned(),
        pod_devices: POD_DEVICES.to_owned(),
        manifests: manifests.to_owned(),
        bpf_root: bpf_root(test),
        run_dir: topology.dir().join("agent"),
    }
}

/// The `--bpf-root` of the agent [`start`] runs for test `test`.
pub fn bpf_root(test: &str) -> PathBuf {
    let short: String = test.chars().take(40).collect();
    PathBuf::from(format!("{BPF_ROOT}/{PREFIX}{short}-{}", std::process::id()))
}

/// The `LB_CONFIG` map pinned under `bpf_root` as `bpftool -j map dump` prints it: the bytes
/// the datapath reads, not what the agent believes it wrote.
pub fn pinned_datapath_config(bpf_root: &std::path::Path) -> String {
    pinned_map_dump(bpf_root, lb_common::maps::LB_CONFIG)
}

/// The map `name` pinned under `bpf_root` as `bpftool -j map dump` prints it (JSON).
pub fn pinned_map_dump(bpf_root: &std::path::Path, name: &str) -> String {
    let pin = bpf_root.join(lb_common::maps::PIN_VERSION).join(name);
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {out:?}",
        pin.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
