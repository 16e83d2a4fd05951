//! # lb-testkit: the one place for what lb's tests, lab and benchmarks build around the datapath
//!
//! - [`netns`]: network namespaces as guards deleted on drop, commands and long-running
//!   processes inside them, and threads that enter one (a scoped thread per entry, so a panic
//!   can never leave a thread in the wrong namespace); [`veth`] pairs between two of them;
//! - [`pod`]: a pod wired to its node the one way lb's tests and lab do it (Calico style);
//! - [`bpffs`]: mounting bpffs on /sys/fs/bpf where a fresh machine has none;
//! - [`cgroup`]: a test's own cgroup v2 (socket programs are attached there, never to the root);
//! - [`servers`]: what a backend pod runs (the HTTP server, a TCP and UDP echo server);
//! - [`packet`]: frames for `BPF_PROG_TEST_RUN` built by etherparse, and a checked reader;
//! - [`podman`]: podman as lb's image build and its container test run it, and containers
//!   as guards removed on drop;
//! - [`wait_until`]: waiting on a condition with a deadline, never a bare sleep; [`patience`]:
//!   how long each kind of wait may take.
//!
//! Used by `tests/` (`lb-tests`), `lab/` (`lb-lab`) and `bench/` (`lb-bench`). It must not
//! depend on lb-agent: the lab and xtask build on a fresh machine that has no bpf-linker yet.

pub mod bpffs;
pub mod cgroup;
pub mod netns;
pub mod packet;
pub mod packet6;
pub mod patience;
pub mod pod;
pub mod podman;
pub mod servers;
mod wait;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use bpffs::{BPF_ROOT, ensure_bpffs};
pub use netns::{Netns, Outcome, Process, cmdline, exec_host, run_host, veth};
pub use wait::wait_until;

/// Errors of the toolkit's setup and of the commands it runs.
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
    /// A long-running process exited while it was needed.
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
    /// A binary that is needed is not there.
    #[error("{what} not found at {}; {hint}", path.display())]
    MissingBinary {
        /// Which binary.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// A file or directory could not be written, read or used.
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
    /// Something is not in the state a step expects.
    #[error("{0}")]
    Unexpected(String),
}

/// The toolkit's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// The value of a setup step, or a panic naming the step and its error: tests and examples
/// fail loudly on a broken setup (`ok(ns.addr("eth0", "10.0.0.1/24"), "node address")`).
#[track_caller]
pub fn ok<T>(result: Result<T>, what: &str) -> T {
    result.unwrap_or_else(|err| panic!("{what}: {err}"))
}

/// Creates a directory and its parents.
pub fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        action: "create",
        path: path.to_owned(),
        source,
    })
}

/// Writes a whole file.
pub fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}
