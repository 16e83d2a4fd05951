//! One agent per `--bpf-root`: an exclusive `flock` on the bpf-root directory itself.
//!
//! The lock is taken before anything under the root is touched, and held for the agent's life
//! (the kernel drops it when the process exits, however it exits). `--uninstall` takes the same
//! lock, so it cannot remove a datapath under a running agent. The directory is the lock
//! because bpffs holds no regular files, and because a lock file elsewhere (`/run`, beside the
//! socket) would be per mount namespace or per socket, while two agents that share a bpf-root
//! share its inode whatever their containers, sockets or mounts (flock works on bpffs
//! directories: Linux implements it in the VFS for every filesystem).
//!
//! A holder is named by its pid, read from `/proc/locks` (the kernel translates it into our pid
//! namespace; a holder in a namespace we cannot see has none).
use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// Errors of taking the lock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process (an agent or an uninstall) holds the lock.
    #[error("another lb-agent ({holder}) holds --bpf-root `{path}`; stop it first")]
    Held {
        /// The bpf root.
        path: String,
        /// `pid N`, or why the pid is unknown.
        holder: String,
    },
    /// The bpf root could not be created.
    #[error("cannot create --bpf-root `{path}`")]
    Create {
        /// The bpf root.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bpf root could not be opened or locked.
    #[error("cannot lock --bpf-root `{path}`")]
    Lock {
        /// The bpf root.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The exclusive lock on a bpf root, released when dropped (or when the process exits).
#[derive(Debug)]
pub struct BpfRootLock {
    /// The open directory the lock is on.
    _dir: File,
    /// The directories `acquire` created, deepest first (empty when the root existed).
    created: Vec<PathBuf>,
}

impl BpfRootLock {
    /// Creates `bpf_root` if it is missing (remembering what it created) and locks it, failing
    /// at once with [`Error::Held`] when another process holds it.
    pub fn acquire(bpf_root: &Path) -> Result<Self, Error> {
        let created = missing_ancestors(bpf_root);
        std::fs::create_dir_all(bpf_root).map_err(|source| Error::Create {
            path: bpf_root.display().to_string(),
            source,
        })?;
        match lock(bpf_root) {
            Ok(dir) => Ok(Self { _dir: dir, created }),
            Err(err) => {
                remove_empty(&created);
                Err(err)
            }
        }
    }

    /// Locks `bpf_root` if it exists; `None` when it does not (there is nothing to protect).
    pub fn acquire_existing(bpf_root: &Path) -> Result<Option<Self>, Error> {
        match lock(bpf_root) {
            Ok(dir) => Ok(Some(Self {
                _dir: dir,
                created: Vec::new(),
            })),
            Err(Error::Lock { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Removes the directories `acquire` created, if they are still empty: a failed start
    /// leaves no directory behind. The lock itself stays held until drop.
    pub fn remove_created_dirs(&self) {
        remove_empty(&self.created);
    }
}

/// Opens `path` and takes `LOCK_EX | LOCK_NB` on it.
fn lock(path: &Path) -> Result<File, Error> {
    let lock_error = |source| Error::Lock {
        path: path.display().to_string(),
        source,
    };
    // Read-only suffices for flock, and opens directories.
    let dir = File::open(path).map_err(lock_error)?;
    // SAFETY: flock on a descriptor we own; it reads no memory of ours.
    let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(dir);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(lock_error(err));
    }
    let holder = dir
        .metadata()
        .ok()
        .and_then(|meta| holder_pid(meta.dev(), meta.ino()))
        .map_or_else(
            || "pid not visible from this pid namespace".to_owned(),
            |pid| format!("pid {pid}"),
        );
    Err(Error::Held {
        path: path.display().to_string(),
        holder,
    })
}

/// The pid holding a `FLOCK` on the inode `(dev, ino)`, from `/proc/locks`.
fn holder_pid(dev: u64, ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let inode = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    holder_in(&locks, &inode)
}

/// Parses `/proc/locks` lines (`1: FLOCK  ADVISORY  WRITE 1234 00:28:334489 0 EOF`): the pid
/// of the FLOCK on `inode` (`major:minor:ino`, as the kernel prints it). Blocked waiters'
/// lines (`1: -> FLOCK ...`) are not holders; a pid of 0 is one we cannot see.
fn holder_in(locks: &str, inode: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, node, ..] if *node == inode => {
                pid.parse().ok().filter(|pid| *pid != 0)
            }
            _ => None,
        }
    })
}

/// The ancestors of `path` (itself included) that do not exist, deepest first.
fn missing_ancestors(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
        .map(Path::to_owned)
        .collect()
}

/// Removes `dirs` in order while they are empty (`remove_dir` refuses a non-empty one).
fn remove_empty(dirs: &[PathBuf]) {
    for dir in dirs {
        if let Err(err) = std::fs::remove_dir(dir) {
            tracing::debug!(dir = %dir.display(), error = %err, "directory stays");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "1: POSIX  ADVISORY  WRITE 99 00:28:334489 0 EOF\n\
                         2: FLOCK  ADVISORY  WRITE 4242 00:28:334489 0 EOF\n\
                         2: -> FLOCK  ADVISORY  WRITE 7 00:28:334489 0 EOF\n\
                         3: FLOCK  ADVISORY  WRITE 10623 fe:00:10051664 0 EOF\n";

    #[test]
    fn holder_is_the_flock_on_the_inode_not_a_posix_lock_or_a_waiter() {
        assert_eq!(holder_in(LOCKS, "00:28:334489"), Some(4242));
        assert_eq!(holder_in(LOCKS, "fe:00:10051664"), Some(10623));
        assert_eq!(holder_in(LOCKS, "00:28:1"), None);
    }

    #[test]
    fn second_lock_on_a_directory_is_refused_naming_this_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("a/b");
        let first = BpfRootLock::acquire(&root).expect("first lock");
        match BpfRootLock::acquire(&root) {
            Err(Error::Held { holder, .. }) => {
                assert_eq!(holder, format!("pid {}", std::process::id()));
            }
            other => panic!("second lock refused: {other:?}"),
        }
        first.remove_created_dirs();
        assert!(
            !dir.path().join("a").exists(),
            "created directories removed"
        );
        drop(first);
        assert!(
            BpfRootLock::acquire_existing(&root)
                .expect("no error")
                .is_none(),
            "nothing to lock once removed"
        );
    }
}
