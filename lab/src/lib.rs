//! # lb-lab: the story's cluster in network namespaces
//!
//! The lab of `../shared/docs/seed-story.md` as a library, so that `cargo xtask demo`, the
//! end-to-end test and later benchmarks build the same thing the same way:
//!
//! - [`netns`]: RAII guards for namespaces and the processes started in them, veths, sysctls,
//!   and [`down`], which removes what a crashed run left behind;
//! - [`topology`]: the story's names and addresses (router, k8smaster0, k8sslave0, pods) and
//!   [`Lab`], which builds them;
//! - [`bird`]: BIRD 1.6 on the router (AS 65000) and on each node (AS 65001) in kube-router's place;
//! - [`agent`]: one `lb-agent` per node and `lbctl` against it;
//! - [`probe`]: curl and ping inside a namespace, and what their output says; the echo
//!   server's clients;
//! - [`servers`]: what a backend pod runs: the HTTP server and a TCP and UDP echo server;
//! - [`manifests`]: the story's Services and EndpointSlices, `lab/manifests/*.yaml`.
//!
//! Every name this crate creates starts with [`netns::PREFIX`] (namespaces) or lives in a lab
//! namespace (interfaces), under [`RUN_DIR`] (sockets, configs, logs) or under
//! `/sys/fs/bpf/lb-lab-*` (the agents' pins); nothing touches the host's own interfaces.
//! Only one lab runs at a time: [`Lab::up`] clears a previous one first.
//!
//! This crate must not depend on lb-agent: xtask uses it, and xtask builds on a fresh machine
//! that has no bpf-linker yet. The agent is found as a binary by path instead.

pub mod agent;
pub mod bird;
pub mod manifests;
pub mod netns;
pub mod probe;
pub mod servers;
pub mod topology;
mod wait;

use std::path::PathBuf;
use std::time::Duration;

pub use agent::{Agent, AgentOptions, Binaries, Monitor};
pub use netns::{Netns, Outcome, Process, down};
pub use topology::Lab;
pub use wait::wait_until;

/// Directory for the lab's control sockets, configs, pidfiles and logs.
pub const RUN_DIR: &str = "/run/lb-lab";

/// Errors of the lab's setup and of the commands it runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line as typed.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr (stdout when stderr was empty), trimmed.
        stderr: String,
    },
    /// A long-running process exited while the lab needed it.
    #[error("`{cmd}` exited ({status}); the end of its log {log}:\n{tail}")]
    Exited {
        /// The command line and the namespace it ran in.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// A command could not be started at all.
    #[error("cannot run `{cmd}` (is it installed? `cargo xtask setup` installs the lab's tools)")]
    Spawn {
        /// The command line as typed.
        cmd: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// A condition did not hold before its deadline.
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
        /// The last observation, to tell why.
        last: String,
    },
    /// A binary the lab needs is not there.
    #[error("{what} not found at {}; {hint}", path.display())]
    MissingBinary {
        /// Which binary.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// A file of the lab could not be written or read.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The lab is not in the state a step expects.
    #[error("{0}")]
    Unexpected(String),
}

/// The lab's result type.
pub type Result<T> = std::result::Result<T, Error>;
