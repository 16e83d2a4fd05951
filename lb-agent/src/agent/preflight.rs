//! What the agent checks before it takes the lock or touches the datapath, so that a mistyped
//! option fails with its own name and leaves the node as it was: the process has the
//! capabilities it needs, the source is reachable, every `--devices` interface exists, the bpf
//! root is on bpffs (and `--cgroup-root` on cgroup v2 with `--bpf-lb-sock`), and there is a
//! node address to SNAT to. It also warns when the SNAT port range shares ports with the host's
//! unreserved ephemeral ports.
use std::net::Ipv4Addr;

use super::Error;
use crate::{
    config::{AgentConfig, PortRange},
    datapath::{self, devices, loader},
    k8s,
};

/// Checks `config` against the node; returns the node address SNAT uses.
pub fn check(config: &AgentConfig) -> Result<Option<Ipv4Addr>, Error> {
    if let Some(missing) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_capabilities(&status))
        .and_then(missing_capabilities)
    {
        return Err(Error::Capabilities { missing });
    }
    for pattern in &config.pod_devices {
        if let Err(err) = glob::Pattern::new(pattern) {
            return Err(Error::PodDevicesGlob {
                pattern: pattern.clone(),
                reason: err.msg,
            });
        }
    }
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
    if config.bpf_lb_sock {
        datapath::sock::resolve_cgroup_root(&config.cgroup_root).map_err(datapath::Error::from)?;
    }
    if !config.devices.is_empty() {
        warn_on_shared_snat_ports(config.snat_port_range);
    }
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

/// This node's IPv6 address: `--node-ipv6`, else the first global IPv6 address of the first
/// of `--devices`. None is no error: IPv6 node ports are then not served and IPv6 flows that
/// need SNAT are dropped by the datapath (165), which is said once here.
pub fn node_ipv6(config: &AgentConfig) -> Option<std::net::Ipv6Addr> {
    let found = config.node_ipv6.or_else(|| {
        config
            .devices
            .first()
            .and_then(|iface| devices::first_ipv6(iface))
    });
    match (found, config.devices.first()) {
        (Some(addr), _) => tracing::info!(address = %addr, "IPv6 node address"),
        (None, Some(iface)) => tracing::info!(
            iface = %iface,
            "no IPv6 node address (set --node-ipv6 or give the first device a global IPv6 address): IPv6 node ports are not served and IPv6 flows that need SNAT are dropped"
        ),
        (None, None) => {}
    }
    found
}

/// Capability numbers, from linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The `CapEff` mask of `/proc/<pid>/status`.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// What the agent needs and `effective` lacks, as capability names; `None` when nothing.
/// Loading and reading maps and programs needs CAP_BPF and CAP_PERFMON (pointer arithmetic in
/// the programs, Linux 5.8+) or, before those existed, CAP_SYS_ADMIN; attaching to interfaces
/// and the netlink watch need CAP_NET_ADMIN.
fn missing_capabilities(effective: u64) -> Option<String> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        for (cap, name) in [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")] {
            if !has(cap) {
                missing.push(name);
            }
        }
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const LOCAL_RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Warns when host sockets may take source ports of the SNAT range: a host process's
/// connection to a backend from such a port would have its replies taken for an SNATed flow's
/// (or an SNATed flow's for its own). Not an error: a host that never talks to backends is not
/// affected, and the operator may have reasons.
fn warn_on_shared_snat_ports(snat: PortRange) {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let Some(ephemeral) = read(LOCAL_PORT_RANGE).and_then(|text| parse_local_port_range(&text))
    else {
        return;
    };
    let reserved = read(LOCAL_RESERVED_PORTS)
        .map(|text| parse_reserved_ports(&text))
        .unwrap_or_default();
    let shared = shared_ports(snat, ephemeral, &reserved);
    if shared > 0 {
        tracing::warn!(
            snat_port_range = %snat,
            ip_local_port_range = %ephemeral,
            shared,
            "SNAT ports may collide with the host's ephemeral ports; reserve them: \
             sysctl -w net.ipv4.ip_local_reserved_ports={snat}"
        );
    }
}

/// `net.ipv4.ip_local_port_range`: two numbers separated by whitespace.
fn parse_local_port_range(text: &str) -> Option<PortRange> {
    let mut words = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(min)), Some(Ok(max))) = (words.next(), words.next()) else {
        return None;
    };
    (min <= max).then_some(PortRange { min, max })
}

/// `net.ipv4.ip_local_reserved_ports`: comma-separated ports and `MIN-MAX` ranges; what does
/// not parse is skipped.
fn parse_reserved_ports(text: &str) -> Vec<PortRange> {
    text.trim()
        .split(',')
        .filter_map(|item| {
            let item = item.trim();
            let (min, max) = item.split_once('-').unwrap_or((item, item));
            let (min, max) = (min.parse().ok()?, max.parse().ok()?);
            (min <= max).then_some(PortRange { min, max })
        })
        .collect()
}

/// How many ports of `snat` the host may hand out as ephemeral ports: those in `ephemeral`
/// that no `reserved` range covers.
fn shared_ports(snat: PortRange, ephemeral: PortRange, reserved: &[PortRange]) -> u32 {
    if !snat.overlaps(ephemeral) {
        return 0;
    }
    let (min, max) = (snat.min.max(ephemeral.min), snat.max.min(ephemeral.max));
    (min..=max)
        .filter(|port| !reserved.iter().any(|r| (r.min..=r.max).contains(port)))
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn range(min: u16, max: u16) -> PortRange {
        PortRange { min, max }
    }

    #[test]
    fn an_invalid_pod_devices_glob_is_named() {
        let config = AgentConfig::from_args(
            ["lb-agent", "--node-name=n1", "--pod-devices=lxc*,veth["],
            |_| None,
        )
        .expect("config");
        assert_eq!(config.pod_devices, ["lxc*", "veth["]);
        let err = check(&config).expect_err("invalid glob");
        assert!(
            err.to_string()
                .starts_with("--pod-devices pattern `veth[` is not a valid glob: "),
            "{err}"
        );
    }

    #[test]
    fn capabilities_are_read_from_capeff_and_sys_admin_stands_for_bpf_and_perfmon() {
        let status = "Name:\tlb-agent\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let all = effective_capabilities(status).expect("CapEff");
        assert_eq!(missing_capabilities(all), None);
        let without = |caps: &[u32]| caps.iter().fold(all, |mask, cap| mask & !(1 << cap));
        assert_eq!(
            missing_capabilities(without(&[CAP_BPF, CAP_PERFMON])),
            None,
            "CAP_SYS_ADMIN covers both"
        );
        assert_eq!(
            missing_capabilities(without(&[CAP_BPF, CAP_SYS_ADMIN])).as_deref(),
            Some("CAP_BPF")
        );
        assert_eq!(
            missing_capabilities(without(&[
                CAP_BPF,
                CAP_PERFMON,
                CAP_SYS_ADMIN,
                CAP_NET_ADMIN
            ]))
            .as_deref(),
            Some("CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN")
        );
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }

    #[test]
    fn the_default_snat_range_shares_no_port_with_the_kernels_default_ephemeral_range() {
        let ephemeral = parse_local_port_range("32768\t60999\n").expect("parse");
        assert_eq!(ephemeral, range(32_768, 60_999));
        let snat = range(
            lb_common::config::SNAT_PORT_MIN,
            lb_common::config::SNAT_PORT_MAX,
        );
        assert_eq!(shared_ports(snat, ephemeral, &[]), 0);
    }

    #[test]
    fn a_widened_ephemeral_range_shares_the_ports_not_reserved() {
        let ephemeral = range(1024, 65_535);
        let snat = range(61_000, 65_535);
        assert_eq!(shared_ports(snat, ephemeral, &[]), 4536);
        let reserved = parse_reserved_ports("8080,61000-65000\n");
        assert_eq!(reserved, [range(8080, 8080), range(61_000, 65_000)]);
        assert_eq!(shared_ports(snat, ephemeral, &reserved), 535);
        let reserved = parse_reserved_ports("61000-65535");
        assert_eq!(shared_ports(snat, ephemeral, &reserved), 0);
        assert_eq!(parse_reserved_ports("\n"), []);
    }
}
