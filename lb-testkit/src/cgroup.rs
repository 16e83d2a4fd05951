//! A cgroup v2 of a test's own, for socket-level load balancing: programs attached to it see
//! only the processes a test moves in, never the host's (tests must not attach to the root
//! cgroup). [`TestCgroup`] is a guard that removes the cgroup on drop.
use std::path::{Path, PathBuf};

use crate::{Error, Netns, Outcome, Result, wait_until};

/// Where the unified (v2) hierarchy is mounted: `/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a v1/v2 hybrid one; the first `cgroup2` line of /proc/mounts.
pub fn unified_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|source| Error::Io {
        action: "read",
        path: "/proc/mounts".into(),
        source,
    })?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .ok_or_else(|| Error::Unexpected("no cgroup2 mount in /proc/mounts".into()))
}

/// A child cgroup of the unified hierarchy's root, named after its test and the process id.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<unified>/lb-test-<test>-<pid>`.
    pub fn create(test: &str) -> Result<Self> {
        let path = unified_mount()?.join(format!("lb-test-{test}-{}", std::process::id()));
        crate::create_dir(&path)?;
        Ok(Self { path })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `program` inside `ns` as a member of this cgroup: a shell writes its own pid to
    /// `cgroup.procs`, then execs the program, so that every socket it opens is the cgroup's.
    pub fn exec(&self, ns: &Netns, program: &str, args: &[&str]) -> Result<Outcome> {
        let script = format!(
            "echo $$ > '{}' && exec \"$@\"",
            self.path.join("cgroup.procs").display()
        );
        let mut all = vec!["-c", script.as_str(), "sh", program];
        all.extend_from_slice(args);
        ns.exec("sh", &all)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup can be removed once its processes are gone; they were commands that ended,
        // so this is at most their exit being reaped.
        let removed = wait_until(
            "the test cgroup to be removed",
            crate::patience::SETTLE_WITHIN,
            || match std::fs::remove_dir(&self.path) {
                Ok(()) => Ok(Some(())),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Some(())),
                Err(err) => Err(err.to_string()),
            },
        );
        if let Err(err) = removed {
            eprintln!("cannot remove {}: {err}", self.path.display());
        }
    }
}
