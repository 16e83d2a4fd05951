//! One lb-agent per node, and `lbctl` against it.
//!
//! The agent runs in the node's namespace through `nsenter --net` (so /sys/fs/bpf stays the
//! host's bpffs, where it pins under `/sys/fs/bpf/lb-lab-<node>`), with the file source on the
//! lab's copy of `lab/manifests`, its config directory (one file per key, as a mounted ConfigMap
//! presents it) and its socket under the run directory. `lbctl` runs on the host: a unix socket
//! is reached by path, whatever the network namespace. Binaries are found by path
//! ([`Binaries`]): this crate must not depend on lb-agent. Readiness is asked of the agent
//! directly through `lb_api`'s client; the story's own `lbctl` commands run the binary.
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use lb_api::Client;
use lb_api::proto::StatusReply;

use crate::netns::{BPF_PIN_PREFIX, Netns, Outcome, Process, cmdline, exec_host};
use crate::story::{NODE_DEV, NodeSpec};
use crate::{Error, Result};
use lb_testkit::{create_dir, ensure_bpffs, write_file};

/// The lb binaries the lab runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `lb-agent`.
    pub agent: PathBuf,
    /// `lbctl`.
    pub lbctl: PathBuf,
}

impl Binaries {
    /// `lb-agent` and `lbctl` in `dir` (a cargo target profile directory), or a clear error
    /// saying how to build them.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let bins = Self {
            agent: dir.join("lb-agent"),
            lbctl: dir.join("lbctl"),
        };
        for (what, path) in [("lb-agent", &bins.agent), ("lbctl", &bins.lbctl)] {
            if !path.is_file() {
                return Err(Error::MissingBinary {
                    what,
                    path: path.clone(),
                    hint: "build it with `cargo build -p lb-agent -p lbctl` (add --release for \
                           target/release), or point LB_BIN_DIR at the directory holding it"
                        .into(),
                });
            }
        }
        Ok(bins)
    }
}

/// A running lb-agent on one node.
#[derive(Debug)]
pub struct Agent {
    node: String,
    socket: PathBuf,
    config_dir: PathBuf,
    bpf_root: PathBuf,
    lbctl: PathBuf,
    process: Process,
}

/// Where and how an agent runs: what [`Agent::start`] fills in for a lab node, and what a test
/// with a topology of its own passes to [`Agent::start_with`].
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--node-name`; also names its socket (`RUN_DIR/NODE.sock`) and its directory
    /// (`RUN_DIR/NODE/`, holding `config/` and `agent.log`).
    pub node: String,
    /// `--node-ip`.
    pub node_ip: Ipv4Addr,
    /// `--devices`.
    pub devices: String,
    /// `--pod-devices`.
    pub pod_devices: String,
    /// The directory of `--source file:DIR`.
    pub manifests: PathBuf,
    /// `--bpf-root`; removed when the agent is dropped.
    pub bpf_root: PathBuf,
    /// Where its socket, config directory and log go.
    pub run_dir: PathBuf,
}

impl Agent {
    /// Starts lb-agent in `ns` for `node`, with the file source on `manifests`. Returns once
    /// the process is started; [`Agent::wait_ready`] waits for its first sync.
    pub fn start(
        ns: &Netns,
        node: &NodeSpec,
        bins: &Binaries,
        manifests: &Path,
        run_dir: &Path,
    ) -> Result<Self> {
        let options = AgentOptions {
            node: node.name.to_owned(),
            node_ip: node.ip,
            devices: NODE_DEV.to_owned(),
            pod_devices: "lxc*".to_owned(),
            manifests: manifests.to_owned(),
            bpf_root: PathBuf::from(format!("{BPF_PIN_PREFIX}{}", node.name)),
            run_dir: run_dir.to_owned(),
        };
        Self::start_with(ns, bins, &options)
    }

    /// Starts lb-agent in `ns` as `options` say, with `bpf-lb-external-clusterip` false in its
    /// config directory. Returns once the process is started; [`Agent::wait_ready`] waits for
    /// its first sync.
    pub fn start_with(ns: &Netns, bins: &Binaries, options: &AgentOptions) -> Result<Self> {
        let (socket, config_dir, process) = Self::spawn(ns, bins, options)?;
        Ok(Self {
            node: options.node.clone(),
            socket,
            config_dir,
            bpf_root: options.bpf_root.clone(),
            lbctl: bins.lbctl.clone(),
            process,
        })
    }

    /// Stops the agent's process and leaves its pins (maps, links) in place, as a node's agent
    /// being restarted or upgraded does; [`Agent::start_again`] starts the next one.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts a new agent process with `options` (those it was started with) after
    /// [`Agent::stop`]; it adopts the pins the last one left. Returns once the process is
    /// started; [`Agent::wait_ready`] waits for its first sync.
    pub fn start_again(
        &mut self,
        ns: &Netns,
        bins: &Binaries,
        options: &AgentOptions,
    ) -> Result<()> {
        self.process.stop();
        let (_, _, process) = Self::spawn(ns, bins, options)?;
        self.process = process;
        Ok(())
    }

    /// Prepares the config directory and starts the process: its socket, config directory and
    /// process.
    fn spawn(
        ns: &Netns,
        bins: &Binaries,
        options: &AgentOptions,
    ) -> Result<(PathBuf, PathBuf, Process)> {
        ensure_bpffs()?;
        let node = options.node.as_str();
        let dir = options.run_dir.join(node);
        let config_dir = dir.join("config");
        create_dir(&config_dir)?;
        write_file(&config_dir.join("bpf-lb-external-clusterip"), "false\n")?;
        let socket = options.run_dir.join(format!("{node}.sock"));
        // A socket left by a killed agent would make the new one fail to bind.
        let _ = std::fs::remove_file(&socket);
        let bpf_root = options.bpf_root.clone();
        let source = format!("file:{}", options.manifests.display());
        let node_ip = options.node_ip.to_string();
        let process = ns.spawn(
            &bins.agent.to_string_lossy(),
            &[
                "--source",
                &source,
                "--devices",
                &options.devices,
                "--pod-devices",
                &options.pod_devices,
                "--node-name",
                node,
                "--node-ip",
                &node_ip,
                "--bpf-root",
                &bpf_root.to_string_lossy(),
                "--socket",
                &socket.to_string_lossy(),
                "--config-dir",
                &config_dir.to_string_lossy(),
            ],
            &dir.join("agent.log"),
        )?;
        Ok((socket, config_dir, process))
    }

    /// Polls the agent's status (what `lbctl status` shows) until it is ready, failing early
    /// (with the agent's log) if the agent exits. Returns the status.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<StatusReply> {
        let Self {
            node,
            socket,
            process,
            ..
        } = self;
        process.wait_until(&format!("lb-agent on {node} to be ready"), timeout, || {
            let status = Client::connect(socket)
                .and_then(|mut client| client.status())
                .map_err(|err| err.to_string())?;
            match status.not_ready_reason() {
                None => Ok(Some(status)),
                Some(reason) => Err(reason),
            }
        })
    }

    /// The node it runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its config directory.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The agent process (its log explains a failure).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Fails when the agent has exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// Runs `lbctl --socket SOCKET args`, allowing it to fail; the outcome's command line
    /// reads `lbctl args` as an operator types it.
    pub fn lbctl(&self, args: &[&str]) -> Result<Outcome> {
        let socket = self.socket.to_string_lossy();
        let mut full = vec!["--socket", socket.as_ref()];
        full.extend_from_slice(args);
        let mut outcome = exec_host(&self.lbctl.to_string_lossy(), &full)?;
        outcome.cmdline = cmdline("lbctl", args);
        Ok(outcome)
    }

    /// Starts `lbctl monitor --type drop` and returns the stream of its lines.
    pub fn monitor_drops(&self) -> Result<Monitor> {
        let socket = self.socket.to_string_lossy().into_owned();
        let args = ["--socket", socket.as_str(), "monitor", "--type", "drop"];
        let line = cmdline("lbctl", &args[2..]);
        let mut child = Command::new(&self.lbctl)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                cmd: line.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Monitor {
            cmdline: line,
            child,
            lines: rx,
            seen: Vec::new(),
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.stop();
        // The pins (maps, links) outlive the agent on purpose; the lab's do not outlive the lab.
        if let Err(err) = std::fs::remove_dir_all(&self.bpf_root)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("lb-lab: cannot remove {}: {err}", self.bpf_root.display());
        }
    }
}

/// A running `lbctl monitor`, stopped on drop.
#[derive(Debug)]
pub struct Monitor {
    cmdline: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Monitor {
    /// The command line, as an operator types it.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Reads lines until one satisfies `matches`, and returns it; fails after `timeout` with
    /// every line seen so far.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let exited = match self.child.try_wait() {
                        Ok(Some(status)) => format!(" (lbctl exited: {status})"),
                        _ => String::new(),
                    };
                    return Err(Error::Timeout {
                        what: format!("`{}` to print {what}{exited}", self.cmdline),
                        timeout,
                        last: self.seen.join("\n"),
                    });
                }
            }
        }
    }

    /// Every line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Both fail only when lbctl has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
