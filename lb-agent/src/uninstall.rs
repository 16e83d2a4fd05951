//! `lb-agent --uninstall`: removes what lb installed on a node, and nothing else.
//!
//! Everything lb creates on a node lives under `--bpf-root`, in one directory per pin-layout
//! version (`<bpf-root>/v1/`, see `lb_common::maps::PIN_VERSION`): the maps, and under `links/`
//! the TCX links that hold the programs on the interfaces. lb creates no qdisc (TCX needs none),
//! no route and no file outside that directory but its socket (removed too). So uninstalling is:
//!
//! 1. take the bpf root's lock (`crate::lock`), refusing while an agent holds it (it would
//!    re-create what we remove), and refuse while an agent still answers on `--socket` (an
//!    agent older than the lock);
//! 2. in every version directory, detach each pinned link (`BPF_LINK_DETACH`, so that the
//!    program leaves the interface even if some process still holds the link open) and unpin it;
//!    the programs, referenced only by their links, are freed by the kernel with them;
//! 3. unpin every map and remove the version directories;
//! 4. remove `--bpf-root` itself if that left it empty; anything else in it is not lb's and stays.
//!
//! Version directories are found by name (`v` followed by digits), so a node that ran an older
//! lb with another pin layout is cleaned as well. The agent uses [`other_versions`] at start to
//! warn about them.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

/// Errors of `--uninstall`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An agent holds the bpf root's lock.
    #[error(transparent)]
    Locked(#[from] crate::lock::Error),
    /// An agent still runs and would re-create its pins.
    #[error("lb-agent is still running (it answers on `{socket}`); stop it first")]
    AgentRunning {
        /// The agent's socket.
        socket: String,
    },
    /// The bpf root is not a directory we can read.
    #[error("cannot read --bpf-root `{path}`")]
    ReadRoot {
        /// The bpf root.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A pinned link could not be detached.
    #[error("cannot detach the link pinned at `{path}`")]
    Detach {
        /// The pin.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A pin or directory could not be removed.
    #[error("cannot remove `{path}`")]
    Remove {
        /// The pin or directory.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What `--uninstall` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Links detached and unpinned.
    pub links: Vec<PathBuf>,
    /// Other pins (maps) removed.
    pub pins: Vec<PathBuf>,
    /// Version directories removed.
    pub version_dirs: Vec<PathBuf>,
    /// Whether `--bpf-root` itself was removed (it was empty afterwards).
    pub root_removed: bool,
    /// Entries of `--bpf-root` that are not lb's and were left alone.
    pub foreign: Vec<PathBuf>,
    /// Whether a stale `--socket` (a socket nobody answers on) was removed.
    pub socket_removed: bool,
}

/// Whether `name` is a pin-layout version directory's name: `v` and digits.
pub fn is_version_dir_name(name: &str) -> bool {
    name.strip_prefix('v')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// The version directories under `bpf_root`, sorted; none when it does not exist.
pub fn version_dirs(bpf_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(bpf_root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter(|entry| is_version_dir_name(&entry.file_name().to_string_lossy()))
        .map(|entry| entry.path())
        .collect();
    dirs.sort();
    dirs
}

/// Version directories other than `current` (`lb_common::maps::PIN_VERSION`): pins an lb with
/// another map layout left behind, which this agent does not use.
pub fn other_versions(bpf_root: &Path, current: &str) -> Vec<PathBuf> {
    version_dirs(bpf_root)
        .into_iter()
        .filter(|dir| dir.file_name().is_none_or(|name| name != current))
        .collect()
}

/// Removes every link, program and pin lb created under `bpf_root`, refusing while an agent
/// holds its lock or answers on `socket`.
pub fn uninstall(bpf_root: &Path, socket: &Path) -> Result<Report, Error> {
    // Held until we return: no agent starts on this root while we remove it.
    let _lock = crate::lock::BpfRootLock::acquire_existing(bpf_root)?;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(Error::AgentRunning {
            socket: socket.display().to_string(),
        });
    }
    let mut report = Report::default();
    // A socket file nobody answers on is what a killed agent leaves; only a socket is removed.
    if std::fs::symlink_metadata(socket)
        .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
    {
        remove_file(socket)?;
        report.socket_removed = true;
    }
    match std::fs::metadata(bpf_root) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(source) => {
            return Err(Error::ReadRoot {
                path: bpf_root.display().to_string(),
                source,
            });
        }
        Ok(_) => {}
    }
    for dir in version_dirs(bpf_root) {
        remove_version_dir(&dir, &mut report)?;
    }
    report.foreign = files_in(bpf_root)?;
    if report.foreign.is_empty() {
        match std::fs::remove_dir(bpf_root) {
            Ok(()) => report.root_removed = true,
            // A bpffs mount point itself (--bpf-root /sys/fs/bpf) cannot be removed, nor should it.
            Err(err) => tracing::debug!(path = %bpf_root.display(), error = %err, "bpf root stays"),
        }
    } else {
        tracing::warn!(
            bpf_root = %bpf_root.display(),
            entries = ?report.foreign,
            "leaving entries that lb did not create"
        );
    }
    Ok(report)
}

/// Detaches and unpins the links of the version directory `dir`, then removes its pins and
/// the directory itself, recording each in `report`. The agent also uses it to undo a failed
/// first start.
pub fn remove_version_dir(dir: &Path, report: &mut Report) -> Result<(), Error> {
    // Links first: once they are gone no program runs, so no packet sees a half-removed map.
    let links = dir.join("links");
    for path in files_in(&links)? {
        detach_link(&path)?;
        remove_file(&path)?;
        tracing::info!(link = %path.display(), "detached and unpinned link");
        report.links.push(path);
    }
    remove_tree(dir, &mut report.pins)?;
    report.version_dirs.push(dir.to_owned());
    Ok(())
}

/// The entries of `dir`, sorted; none when it does not exist.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ReadRoot {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    paths.sort();
    Ok(paths)
}

/// Removes `dir` and everything below it, recording every pin (non-directory) removed.
fn remove_tree(dir: &Path, pins: &mut Vec<PathBuf>) -> Result<(), Error> {
    for path in files_in(dir)? {
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir());
        if is_dir {
            remove_tree(&path, pins)?;
        } else {
            remove_file(&path)?;
            pins.push(path);
        }
    }
    std::fs::remove_dir(dir).map_err(|source| Error::Remove {
        path: dir.display().to_string(),
        source,
    })
}

fn remove_file(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(Error::Remove {
            path: path.display().to_string(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// `BPF_OBJ_GET` (7) and `BPF_LINK_DETACH` (34), from linux/bpf.h's `enum bpf_cmd`.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the link pinned at `path` from its interface. Unpinning alone would leave the
/// program attached while any process (a hung agent, `bpftool`) still holds the link open;
/// `BPF_LINK_DETACH` (Linux 5.9; TCX links since 6.6) detaches it for everyone. A pin that is
/// not a link (`EINVAL`) or a link already detached (`ENOLINK`) needs nothing more.
fn detach_link(path: &Path) -> Result<(), Error> {
    let err = |source| Error::Detach {
        path: path.display().to_string(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // Layout of `union bpf_attr` for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed; the kernel reads
    // the NUL-terminated path c_path points to, which outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let Ok(raw) = i32::try_from(fd) else {
        return Err(err(io::Error::from(io::ErrorKind::InvalidData)));
    };
    // SAFETY: BPF_OBJ_GET returned a fresh descriptor that we now own and close on drop.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Layout for BPF_LINK_DETACH: link_fd (u32).
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let attr = LinkDetach {
        link_fd: raw.unsigned_abs(),
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; fd stays open during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &attr as *const LinkDetach,
            std::mem::size_of::<LinkDetach>(),
        )
    };
    drop(fd);
    if rc < 0 {
        let cause = io::Error::last_os_error();
        if !matches!(cause.raw_os_error(), Some(libc::EINVAL | libc::ENOLINK)) {
            return Err(err(cause));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_dirs_are_v_and_digits() {
        assert!(is_version_dir_name("v1"));
        assert!(is_version_dir_name("v12"));
        assert!(!is_version_dir_name("v"));
        assert!(!is_version_dir_name("v1a"));
        assert!(!is_version_dir_name("links"));
        assert!(!is_version_dir_name("cilium"));
    }
}
