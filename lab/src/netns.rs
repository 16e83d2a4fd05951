//! The lab's namespaces: every one is named with [`PREFIX`], so that [`down`] removes exactly
//! what a crashed or `--keep` run left (those namespaces, the agents' pins and [`RUN_DIR`]) and
//! never a test's or a benchmark's. Namespaces, processes and veths themselves are
//! `lb_testkit`'s, re-exported here.
pub use lb_testkit::netns::{Netns, Outcome, Process, cmdline, exec_host, run_host, veth};

use crate::{Error, RUN_DIR, Result};

/// Prefix of every namespace the lab creates, so that it never clashes with the host's or
/// another test suite's, and [`down`] finds exactly the lab's.
pub const PREFIX: &str = "lblab-";

/// Where the agents' bpffs pin directories live: `/sys/fs/bpf/lb-lab-<node>`.
pub const BPF_PIN_PREFIX: &str = "/sys/fs/bpf/lb-lab-";

/// Creates the lab namespace `PREFIX + short` (`lblab-router`).
pub fn create(short: &str) -> Result<Netns> {
    Netns::create(&format!("{PREFIX}{short}"))
}

/// Removes everything a previous lab left behind: its namespaces (and the processes in them),
/// the agents' bpffs pins and the run directory. Returns the namespaces it removed.
pub fn down() -> Result<Vec<String>> {
    // Pods first, the router last: a node's agent may still be handling a pod's traffic.
    let mut names = lb_testkit::netns::list(PREFIX)?;
    names.sort_by_key(|name| (!name.contains("-pod-"), name.contains("router")));
    for name in &names {
        lb_testkit::netns::remove(name)?;
    }
    if let Ok(entries) = std::fs::read_dir(lb_testkit::BPF_ROOT) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.to_string_lossy().starts_with(BPF_PIN_PREFIX) {
                std::fs::remove_dir_all(&path).map_err(|source| Error::Io {
                    action: "remove pins",
                    path: path.clone(),
                    source,
                })?;
            }
        }
    }
    match std::fs::remove_dir_all(RUN_DIR) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::Io {
                action: "remove",
                path: RUN_DIR.into(),
                source: err,
            });
        }
        _ => {}
    }
    Ok(names)
}
