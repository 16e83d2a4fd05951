//! Socket-level load balancing (`bpf-lb-sock`): the eight cgroup programs of `lb-ebpf/src/sock.rs`
//! (IPv4 and IPv6 connect, sendmsg, recvmsg, getpeername)
//! attached to a cgroup v2 directory (`cgroup-root`), so that processes of the host's network
//! namespace reach frontends by having their sockets rewritten (see docs/datapath.md, "Host
//! network namespace").
//!
//! - **Where**: `cgroup-root` must be a cgroup v2 mount or a directory in one. On a v1/v2
//!   hybrid host `/sys/fs/cgroup` is a tmpfs of v1 hierarchies and the unified one is mounted
//!   at `/sys/fs/cgroup/unified`: that is used instead when the path given is not cgroup v2
//!   itself.
//! - **Which namespace**: the programs translate only sockets of the agent's own network
//!   namespace, whose cookie (`SO_NETNS_COOKIE`, Linux 5.14) goes into `LB_HOST_NETNS`.
//! - **Pinned**: each link is pinned under `<pin-dir>/links/<program>`, so that the programs stay
//!   attached while the agent restarts; `--uninstall` detaches them with every other link. A new
//!   agent attaches its programs first and only then releases the old links: both run for a
//!   moment, which is harmless (the second sees a backend's address, no frontend, and lets it
//!   be), and no connect goes untranslated. That also moves them when `cgroup-root` changed.
//! - **Off** (`bpf-lb-sock=false`): links an earlier agent pinned are released.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::Array,
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::maps as names;

/// The programs, by their names in the object.
pub const PROGRAMS: [&str; 8] = [
    "sock4_connect",
    "sock4_sendmsg",
    "sock4_recvmsg",
    "sock4_getpeername",
    "sock6_connect",
    "sock6_sendmsg",
    "sock6_recvmsg",
    "sock6_getpeername",
];

/// `CGROUP2_SUPER_MAGIC` (`statfs.f_type` of a cgroup v2 mount).
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// Errors of socket-level load balancing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither the path nor its `unified` directory is cgroup v2.
    #[error(
        "--cgroup-root `{path}` is not on a cgroup v2 mount (nor is `{path}/unified`); mount one \
         with `mount -t cgroup2 none DIR` and pass DIR, or turn --bpf-lb-sock off"
    )]
    NotCgroup2 {
        /// The path given.
        path: String,
    },
    /// The cgroup directory cannot be opened.
    #[error("cannot open cgroup `{path}`")]
    OpenCgroup {
        /// The cgroup directory.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The netns cookie of the agent's namespace cannot be read.
    #[error("cannot read this network namespace's cookie (SO_NETNS_COOKIE needs Linux 5.14)")]
    NetnsCookie(#[source] io::Error),
    /// A program cannot be found, loaded, attached or pinned.
    #[error("cannot {action} program `{program}` on cgroup `{cgroup}`")]
    Program {
        /// find, load, attach, pin.
        action: &'static str,
        /// The program.
        program: &'static str,
        /// The cgroup directory.
        cgroup: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `LB_HOST_NETNS` cannot be written.
    #[error("cannot write map `{map}`", map = names::LB_HOST_NETNS)]
    Map(#[source] Box<aya::maps::MapError>),
}

/// The cgroup v2 directory to attach to for `cgroup_root`: itself when it is on cgroup v2,
/// else its `unified` directory when that is (a v1/v2 hybrid host).
pub fn resolve_cgroup_root(cgroup_root: &Path) -> Result<PathBuf, Error> {
    if is_cgroup2(cgroup_root) {
        return Ok(cgroup_root.to_owned());
    }
    let unified = cgroup_root.join("unified");
    if is_cgroup2(&unified) {
        return Ok(unified);
    }
    Err(Error::NotCgroup2 {
        path: cgroup_root.display().to_string(),
    })
}

/// Whether `path` lives on a cgroup v2 mount.
pub fn is_cgroup2(path: &Path) -> bool {
    super::loader::fs_magic(path) == Some(CGROUP2_MAGIC)
}

/// The cookie of the calling thread's network namespace.
pub fn netns_cookie() -> Result<u64, Error> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::NetnsCookie(io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(Error::NetnsCookie(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// Where the link of `program` is pinned.
pub fn link_pin_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join("links").join(program)
}

/// Whether a file in `<pin-dir>/links/` is one of these programs' links (not an interface's).
pub fn is_sock_link(file_name: &str) -> bool {
    PROGRAMS.contains(&file_name)
}

/// Loads the programs, records this namespace as the one to translate, and attaches them
/// to `cgroup` (already resolved), replacing the links an earlier agent pinned. Returns the
/// cgroup attached to.
pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, cgroup: &Path) -> Result<(), Error> {
    let cgroup_name = cgroup.display().to_string();
    let cookie = netns_cookie()?;
    let map = ebpf.map_mut(names::LB_HOST_NETNS).ok_or_else(|| {
        Error::Map(Box::new(aya::maps::MapError::InvalidName {
            name: names::LB_HOST_NETNS.to_owned(),
        }))
    })?;
    let mut netns: Array<_, u64> = Array::try_from(map).map_err(|err| Error::Map(Box::new(err)))?;
    netns
        .set(0, cookie, 0)
        .map_err(|err| Error::Map(Box::new(err)))?;
    let dir = std::fs::File::open(cgroup).map_err(|source| Error::OpenCgroup {
        path: cgroup_name.clone(),
        source,
    })?;
    for name in PROGRAMS {
        let fail = |action: &'static str| {
            let cgroup = cgroup_name.clone();
            move |source: Box<dyn std::error::Error + Send + Sync>| Error::Program {
                action,
                program: name,
                cgroup,
                source,
            }
        };
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| fail("find")("not in the object".into()))?
            .try_into()
            .map_err(|err: aya::programs::ProgramError| fail("find")(Box::new(err)))?;
        program.load().map_err(|err| fail("load")(Box::new(err)))?;
        // A link takes no attach flags (EINVAL): a cgroup's links always run beside each
        // other and beside other programs, as `BPF_F_ALLOW_MULTI` would.
        let link_id = program
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|err| fail("attach")(Box::new(err)))?;
        let link: FdLink = program
            .take_link(link_id)
            .map_err(|err| fail("attach")(Box::new(err)))?
            .try_into()
            .map_err(|err: aya::programs::links::LinkError| fail("attach")(Box::new(err)))?;
        // The new link runs before the old one goes: no connect in between is missed.
        let pin = link_pin_path(pin_dir, name);
        release(&pin);
        link.pin(&pin).map_err(|err| fail("pin")(Box::new(err)))?;
    }
    tracing::info!(cgroup = %cgroup_name, netns_cookie = cookie, "socket-level load balancing attached");
    Ok(())
}

/// Releases the links an earlier agent pinned (`bpf-lb-sock` turned off).
pub fn detach(pin_dir: &Path) {
    for name in PROGRAMS {
        let pin = link_pin_path(pin_dir, name);
        if pin.exists() {
            release(&pin);
            tracing::info!(link = %pin.display(), "socket-level load balancing detached");
        }
    }
}

/// Unpins the link at `pin`; with its last reference gone the kernel detaches it.
fn release(pin: &Path) {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            if let Err(err) = link.unpin() {
                tracing::warn!(link = %pin.display(), error = %err, "cannot unpin link");
            }
        }
        Err(_) => {
            let _ = std::fs::remove_file(pin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_hierarchy_of_a_hybrid_host_is_found_under_the_root() {
        // This machine is such a host: /sys/fs/cgroup is a tmpfs of v1 hierarchies. Elsewhere
        // (a pure v2 host) the root itself is cgroup v2.
        let root = Path::new("/sys/fs/cgroup");
        let resolved = resolve_cgroup_root(root).expect("a cgroup v2 hierarchy");
        assert!(is_cgroup2(&resolved));
        if !is_cgroup2(root) {
            assert_eq!(resolved, root.join("unified"));
        }
    }

    #[test]
    fn a_path_on_no_cgroup2_mount_is_refused_with_the_fix() {
        let err = resolve_cgroup_root(Path::new("/proc")).expect_err("not cgroup v2");
        assert!(err.to_string().contains("mount -t cgroup2"), "{err}");
    }

    #[test]
    fn links_of_the_socket_programs_are_told_from_interfaces() {
        assert!(is_sock_link("sock4_connect"));
        assert!(is_sock_link("sock6_getpeername"));
        assert!(!is_sock_link("from-pod-lxc1"));
    }
}
