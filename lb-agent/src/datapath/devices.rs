//! Attaching the programs: `from_netdev` to the external interfaces, `from_pod` to the host
//! side of pod interfaces (matched by glob, including ones created later: `LinkWatcher` wakes
//! on every netlink link event and the caller rescans), and `from_host` to the egress of both
//! (replies of host-network backends).
//!
//! Links are TCX links pinned under `<pin-dir>/links/<hook>-<iface>`: they outlive the agent,
//! so traffic keeps flowing while it restarts, and a new agent swaps its program into the
//! existing link atomically (`attach_to_link`) instead of detaching and re-attaching.
use std::{
    ffi::{CStr, CString},
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use lb_common::drop::Hook;
use tokio::io::unix::AsyncFd;

use super::{Error, loader::classifier};

/// The program of a hook, by its name in the object.
pub fn program_name(hook: Hook) -> &'static str {
    match hook {
        Hook::FromNetdev => "from_netdev",
        Hook::FromPod => "from_pod",
        Hook::FromHost => "from_host",
    }
}

/// Where a hook's program runs: the ingress hooks on ingress, from-host (what the host's
/// own stack sends: replies of host-network backends) on egress.
pub fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::FromNetdev | Hook::FromPod => TcAttachType::Ingress,
        Hook::FromHost => TcAttachType::Egress,
    }
}

/// The interfaces of the current network namespace, as (ifindex, name).
///
/// `if_nameindex` asks the kernel of our network namespace; /sys/class/net would show the
/// namespace that mounted /sys, which differs under `nsenter --net`.
pub fn interfaces() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, or NULL.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return out;
    }
    let mut cursor = list;
    // SAFETY: we walk the array up to its terminating entry and free it once afterwards.
    unsafe {
        while (*cursor).if_index != 0 && !(*cursor).if_name.is_null() {
            let name = CStr::from_ptr((*cursor).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*cursor).if_index, name));
            cursor = cursor.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// The ifindex of `iface`, if it exists.
pub fn ifindex(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The first IPv4 address of `iface`, the node address SNAT uses by default.
pub fn first_ipv4(iface: &str) -> Option<std::net::Ipv4Addr> {
    addresses(iface).into_iter().find_map(|addr| match addr {
        IpAddr::V4(addr) => Some(addr),
        IpAddr::V6(_) => None,
    })
}

/// The first global IPv6 address of `iface` (link-local ones, `fe80::/10`, left out: neither a
/// SNAT source nor a node-port address reachable beyond the link), if it has one.
pub fn first_ipv6(iface: &str) -> Option<std::net::Ipv6Addr> {
    addresses(iface).into_iter().find_map(|addr| match addr {
        IpAddr::V6(addr) if !addr.is_unicast_link_local() && !addr.is_loopback() => Some(addr),
        _ => None,
    })
}

/// Every IPv4 and IPv6 address of `iface`, in the kernel's order; none when it cannot be
/// listed.
fn addresses(iface: &str) -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cursor = list;
    // SAFETY: we walk the list getifaddrs returned until its end, reading an entry's address
    // as a sockaddr_in or sockaddr_in6 only when its family says it is one, then free it once.
    unsafe {
        while !cursor.is_null() {
            let entry = &*cursor;
            if !entry.ifa_addr.is_null()
                && CStr::from_ptr(entry.ifa_name).to_bytes() == iface.as_bytes()
            {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let addr = &*(entry.ifa_addr as *const libc::sockaddr_in);
                        found.push(
                            std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)).into(),
                        );
                    }
                    libc::AF_INET6 => {
                        let addr = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                        found.push(std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr).into());
                    }
                    _ => {}
                }
            }
            cursor = entry.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

/// Whether `name` matches the shell-style glob `pattern` (`*`, `?`, `[...]`), as
/// `--pod-devices` takes; an invalid pattern (checked at start) matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|pattern| pattern.matches(name))
}

/// Where the link of `hook` on `iface` is pinned.
pub fn link_pin_path(pin_dir: &Path, hook: Hook, iface: &str) -> std::path::PathBuf {
    pin_dir
        .join("links")
        .join(format!("{}-{iface}", hook.name()))
}

fn attach_err(
    hook: Hook,
    iface: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Attach {
        hook: hook.name(),
        iface: iface.to_owned(),
        source: Box::new(err),
    }
}

/// Attaches `hook`'s program to `iface` (ingress, or egress for from-host), taking over a link pinned by a previous
/// agent when there is one, and pins the link.
pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, hook: Hook, iface: &str) -> Result<(), Error> {
    if ifindex(iface).is_none() {
        return Err(Error::NoSuchInterface {
            iface: iface.to_owned(),
        });
    }
    let name = program_name(hook);
    let program = classifier(ebpf, name)?;
    let pin_path = link_pin_path(pin_dir, hook, iface);

    if let Ok(pinned) = PinnedLink::from_pin(&pin_path) {
        let replaced = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|err| attach_err(hook, iface, err))
            .and_then(|link| {
                program
                    .attach_to_link(link)
                    .map_err(|err| attach_err(hook, iface, err))
            });
        match replaced {
            Ok(link_id) => {
                // The pin keeps the link; dropping our handle only closes our descriptor.
                let _link = program
                    .take_link(link_id)
                    .map_err(|err| attach_err(hook, iface, err))?;
                return Ok(());
            }
            Err(err) => {
                // The pinned link belonged to an interface that is gone (a pod's veth re-created
                // under the same name): forget it and attach afresh.
                tracing::debug!(iface, error = %err, "pinned link is stale; attaching anew");
                let _ = std::fs::remove_file(&pin_path);
            }
        }
    }

    let link_id = program
        .attach_with_options(
            iface,
            attach_type(hook),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|err| attach_err(hook, iface, err))?;
    let link = program
        .take_link(link_id)
        .map_err(|err| attach_err(hook, iface, err))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|err| attach_err(hook, iface, err))?;
    fd_link
        .pin(&pin_path)
        .map_err(|err| attach_err(hook, iface, err))?;
    Ok(())
}

/// The links pinned in `pin_dir`, as (hook name, interface), sorted by interface.
pub fn pinned_links(pin_dir: &Path) -> Vec<(&'static str, String)> {
    let Ok(entries) = std::fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    let mut links: Vec<(&'static str, String)> = entries
        .flatten()
        .filter_map(|entry| {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            [Hook::FromNetdev, Hook::FromPod, Hook::FromHost]
                .iter()
                .find_map(|hook| {
                    file_name
                        .strip_prefix(&format!("{}-", hook.name()))
                        .map(|iface| (hook.name(), iface.to_owned()))
                })
        })
        .collect();
    links.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    links
}

/// Removes pins of links whose interface no longer exists; returns the interfaces.
pub fn prune_stale_links(pin_dir: &Path) -> Vec<String> {
    prune_links(pin_dir, &[Hook::FromNetdev, Hook::FromPod, Hook::FromHost])
}

/// Removes pins of `hooks`' links whose interface no longer exists (a deleted pod's veth
/// takes its link with it, but not the pin); returns the interfaces.
pub fn prune_links(pin_dir: &Path, hooks: &[Hook]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    let mut pruned = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        // A cgroup's link, not an interface's: `sock.rs` keeps or releases it.
        if super::sock::is_sock_link(&file_name) {
            continue;
        }
        let Some(iface) = hooks
            .iter()
            .find_map(|hook| file_name.strip_prefix(&format!("{}-", hook.name())))
        else {
            continue;
        };
        if ifindex(iface).is_none() && std::fs::remove_file(entry.path()).is_ok() {
            pruned.push(iface.to_owned());
        }
    }
    pruned
}

/// A netlink socket subscribed to link events; readable whenever an interface appears,
/// changes or goes away.
pub struct LinkWatcher {
    fd: AsyncFd<OwnedFd>,
}

impl LinkWatcher {
    /// Opens the socket (in the current network namespace).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid starting value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: the AsyncFd owns the socket, so its descriptor stays open while registered.
            fd: unsafe { AsyncFd::register(fd)? },
        })
    }

    /// Waits for the next batch of link events and drains it.
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        let mut guard = self.fd.readable().await?;
        loop {
            // SAFETY: buf is writable for its full length.
            let n = unsafe {
                libc::recv(
                    guard.get_inner().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    return Ok(());
                }
                // ENOBUFS: events were lost; the caller rescans everything anyway.
                if err.raw_os_error() == Some(libc::ENOBUFS) {
                    continue;
                }
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matches_pod_device_names() {
        assert!(glob_match("lxc*", "lxc1234"));
        assert!(glob_match("lxc*", "lxc"));
        assert!(!glob_match("lxc*", "eth0"));
        assert!(glob_match("veth?", "veth1"));
        assert!(!glob_match("veth?", "veth12"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("[ab]*", "bond0"));
        assert!(!glob_match("[ab]*", "cni0"));
        assert!(!glob_match("[", "["), "an invalid pattern matches nothing");
    }
}
