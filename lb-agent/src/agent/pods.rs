//! from-pod (ingress) and from-host (egress) on pod interfaces: attach to every interface
//! matching `--pod-devices` now, and to each new one as netlink announces it.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::Ebpf;
use lb_common::drop::Hook;
use tokio_util::sync::CancellationToken;

use super::AgentState;
use crate::{datapath::devices, sync::lock};

/// Attaches from-pod to every matching interface not yet attached.
pub fn attach_matching(ebpf: &Mutex<Ebpf>, pin_dir: &Path, globs: &[String], state: &AgentState) {
    let attached = state.pod_devices();
    let present: Vec<String> = devices::interfaces()
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    // Interfaces that went away lose their link with them; forget them so that a new interface
    // of the same name gets attached.
    let still_there: Vec<String> = attached
        .iter()
        .filter(|name| present.contains(name))
        .cloned()
        .collect();
    // Only pod links: a --devices interface that goes away is an error liveness reports, and
    // its pins (from-netdev, and from-host, which --devices carry too) are left to the next
    // start's `prune_stale_links`. So pruning goes by from-pod pins, and takes the same
    // interface's from-host pin with each.
    for iface in devices::prune_links(pin_dir, &[Hook::FromPod]) {
        let _ = std::fs::remove_file(devices::link_pin_path(pin_dir, Hook::FromHost, &iface));
        tracing::info!(iface = %iface, "pod interface gone; its link pins removed");
    }
    let mut now = still_there.clone();
    for name in present {
        if still_there.contains(&name) || !globs.iter().any(|glob| devices::glob_match(glob, &name))
        {
            continue;
        }
        let attached = {
            let mut ebpf = lock(ebpf);
            devices::attach(&mut ebpf, pin_dir, Hook::FromPod, &name)
                .and_then(|()| devices::attach(&mut ebpf, pin_dir, Hook::FromHost, &name))
        };
        match attached {
            Ok(()) => {
                tracing::info!(iface = %name, "from-pod attached");
                now.push(name);
            }
            // The interface may have vanished between the listing and the attach.
            Err(err) => {
                tracing::warn!(iface = %name, error = %crate::telemetry::error_chain(&err), "cannot attach from-pod")
            }
        }
    }
    now.sort();
    state.set_pod_devices(now);
}

/// Rescans on every link event until shutdown.
pub async fn watch(
    mut watcher: devices::LinkWatcher,
    ebpf: Arc<Mutex<Ebpf>>,
    pin_dir: PathBuf,
    globs: Vec<String>,
    state: Arc<AgentState>,
    shutdown: CancellationToken,
) {
    if globs.is_empty() {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = watcher.changed() => {
                if let Err(err) = changed {
                    tracing::error!(error = %err, "netlink link watch failed; new pod interfaces are not attached");
                    return;
                }
            }
        }
        attach_matching(&ebpf, &pin_dir, &globs, &state);
    }
}
