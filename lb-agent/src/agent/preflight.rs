//! What the agent checks before it takes the lock or touches the datapath, so that a mistyped
//! option fails with its own name and leaves the node as it was: the source is reachable,
//! every `--devices` interface exists, the bpf root is on bpffs, and there is a node address
//! to SNAT to.
use std::net::Ipv4Addr;

use super::Error;
use crate::{
    config::AgentConfig,
    datapath::{self, devices, loader},
    k8s,
};

/// Checks `config` against the node; returns the node address SNAT uses.
pub fn check(config: &AgentConfig) -> Result<Option<Ipv4Addr>, Error> {
    k8s::check_source(&config.source)?;
    for iface in &config.devices {
        if devices::ifindex(iface).is_none() {
            return Err(datapath::Error::NoSuchInterface {
                iface: iface.clone(),
            }
            .into());
        }
    }
    loader::check_bpffs(&config.bpf_root)?;
    // Checked last: an interface that does not exist has no address either, and says so above.
    match (config.node_ip, config.devices.first()) {
        (Some(ip), _) => Ok(Some(ip)),
        (None, Some(iface)) => {
            devices::first_ipv4(iface)
                .map(Some)
                .ok_or_else(|| Error::NoNodeIp {
                    iface: iface.clone(),
                })
        }
        (None, None) => Ok(None),
    }
}
