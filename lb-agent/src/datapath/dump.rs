//! The maps as text and as service views: what `lbctl service list` prints and what the
//! control-plane tests compare. Reads only; never writes.
use std::fmt::Write as _;

use lb_common::{
    proto,
    service::{
        SERVICE_F_AFFINITY, SERVICE_F_EXTERNAL_IP, SERVICE_F_KIND_MASK, SERVICE_F_LOAD_BALANCER,
        SERVICE_F_LOCAL, SERVICE_F_NODE_PORT, SERVICE_F2_SOURCE_RANGE, ServiceEntry,
    },
};

use super::{
    BackendId, MapsContent, ServiceId,
    maps::{
        ServiceKey, backend_addr_of, backend_id_of, frontend_of, revnat_addr_of, service_id_of,
    },
};
use crate::model::BackendState;

/// A frontend and its backends as the maps say, slot by slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    /// The service id (rev-NAT index).
    pub id: ServiceId,
    /// `VIP:port/PROTO`.
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `ExternalIPs` or `LoadBalancer`, from the master entry's flags.
    pub kind: &'static str,
    /// Cilium's words for the other flags: `Local` for a traffic policy Local,
    /// `sessionAffinity`, `check source-range` for `loadBalancerSourceRanges`.
    pub flags: Vec<&'static str>,
    /// The backends in slot order.
    pub backends: Vec<BackendView>,
}

/// One backend slot of a `ServiceView`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendView {
    /// The backend id.
    pub id: BackendId,
    /// `addr:port/PROTO`.
    pub address: String,
    /// Active (slots 1..=count) or terminating (the qcount slots).
    pub state: BackendState,
}

/// One entry of the services map as `lbctl bpf lb list` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbEntryView {
    /// `VIP:port/PROTO`, or the bare VIP for a wildcard entry.
    pub frontend: String,
    /// 0 for the master entry.
    pub slot: u16,
    /// The frontend's service id; 0 for a wildcard entry.
    pub rev_nat: ServiceId,
    /// `addr:port/PROTO` of a slot's backend; `0.0.0.0:0` (`[::]:0`) for a master entry.
    pub backend: String,
    /// A slot's backend id; 0 for a master entry.
    pub backend_id: BackendId,
    /// A master entry's kind and flags; a wildcard entry's `VIP`.
    pub flags: Vec<&'static str>,
}

/// What Cilium lists as a master entry's backend: the family's unspecified address.
fn no_backend(key: &ServiceKey) -> &'static str {
    match key {
        ServiceKey::V4(_) => "0.0.0.0:0",
        ServiceKey::V6(_) => "[::]:0",
    }
}

/// Every entry of the services map, by frontend (address, port, protocol) then slot.
pub fn lb_entries(content: &MapsContent) -> Vec<LbEntryView> {
    let mut keys: Vec<&ServiceKey> = content.services.keys().collect();
    keys.sort_by_key(|key| (frontend_of(key), key.slot()));
    keys.into_iter()
        .map(|key| {
            let entry = &content.services[key];
            let master = content.services.get(&key.with_slot(0));
            let rev_nat = master.map_or(ServiceId(0), service_id_of);
            if key.proto() == 0 {
                let (vip, _, _) = frontend_of(key);
                return LbEntryView {
                    frontend: vip.to_string(),
                    slot: 0,
                    rev_nat: ServiceId(0),
                    backend: no_backend(key).to_owned(),
                    backend_id: BackendId(0),
                    flags: vec!["VIP"],
                };
            }
            if key.slot() == 0 {
                let mut flags = vec![kind_text(entry.flags)];
                flags.extend(flags_text(entry));
                return LbEntryView {
                    frontend: frontend_text(key),
                    slot: 0,
                    rev_nat,
                    backend: no_backend(key).to_owned(),
                    backend_id: BackendId(0),
                    flags,
                };
            }
            let id = backend_id_of(entry);
            let backend = content.backends.get(&id).map_or_else(
                || "(missing)".to_owned(),
                |backend| {
                    let (addr, port) = backend_addr_of(backend);
                    format!("{}/{}", addr_port(addr, port), proto_text(backend.proto()))
                },
            );
            LbEntryView {
                frontend: frontend_text(key),
                slot: key.slot(),
                rev_nat,
                backend,
                backend_id: id,
                flags: Vec::new(),
            }
        })
        .collect()
}

/// The protocol's name as `lbctl` prints it; `ANY` for a protocol lb has no name for.
fn proto_text(protocol: u8) -> &'static str {
    proto::name(protocol).unwrap_or("ANY")
}

/// The master entry's other flags in Cilium's words.
fn flags_text(master: &ServiceEntry) -> Vec<&'static str> {
    let flags = [
        (SERVICE_F_LOCAL, "Local"),
        (SERVICE_F_AFFINITY, "sessionAffinity"),
    ]
    .into_iter()
    .filter(|(bit, _)| master.flags & bit != 0)
    .map(|(_, text)| text);
    let flags2 = [(SERVICE_F2_SOURCE_RANGE, "check source-range")]
        .into_iter()
        .filter(|(bit, _)| master.flags2 & bit != 0)
        .map(|(_, text)| text);
    flags.chain(flags2).collect()
}

/// The frontend kind a master entry's flags name.
fn kind_text(flags: u8) -> &'static str {
    match flags & SERVICE_F_KIND_MASK {
        SERVICE_F_NODE_PORT => "NodePort",
        SERVICE_F_EXTERNAL_IP => "ExternalIPs",
        SERVICE_F_LOAD_BALANCER => "LoadBalancer",
        _ => "ClusterIP",
    }
}

fn frontend_text(key: &ServiceKey) -> String {
    let (vip, port, protocol) = frontend_of(key);
    format!("{}/{}", addr_port(vip, port), proto_text(protocol))
}

/// `10.96.0.10:80` or `[fd00::a]:80`.
fn addr_port(addr: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// Every frontend (wildcard entries left out), sorted by service id.
pub fn services(content: &MapsContent) -> Vec<ServiceView> {
    let mut views: Vec<ServiceView> = content
        .services
        .iter()
        .filter(|(key, _)| key.slot() == 0 && key.proto() != 0)
        .map(|(key, master)| {
            let total = master.count.saturating_add(master.qcount);
            let backends = (1..=total)
                .filter_map(|slot| {
                    let slot_key = key.with_slot(slot);
                    let id = backend_id_of(content.services.get(&slot_key)?);
                    let backend = content.backends.get(&id)?;
                    let (addr, port) = backend_addr_of(backend);
                    Some(BackendView {
                        id,
                        address: format!(
                            "{}/{}",
                            addr_port(addr, port),
                            proto_text(backend.proto())
                        ),
                        state: if slot <= master.count {
                            BackendState::Active
                        } else {
                            BackendState::Terminating
                        },
                    })
                })
                .collect();
            ServiceView {
                id: service_id_of(master),
                frontend: frontend_text(key),
                kind: kind_text(master.flags),
                flags: flags_text(master),
                backends,
            }
        })
        .collect();
    views.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.frontend.cmp(&b.frontend)));
    views
}

/// The maps as sorted lines, one per entry:
/// `SVC 10.96.0.10:80/TCP slot=0 id=1 count=2 qcount=0 flags=0x1`,
/// `SVC 10.96.0.10:80/TCP slot=1 backend=2`, `VIP 10.96.0.10`,
/// `BE 2 10.244.1.5:8080/TCP state=active flags=0x0`, `REV 1 10.96.0.10:80`,
/// `SRC 1 192.168.0.0/16` (a source range of service 1); IPv6 addresses in brackets with a
/// port (`SVC [fd00::a]:80/TCP ...`).
pub fn render(content: &MapsContent) -> String {
    let mut lines = Vec::new();
    for (key, entry) in &content.services {
        if key.proto() == 0 {
            let (vip, _, _) = frontend_of(key);
            lines.push(format!("VIP {vip}"));
        } else if key.slot() == 0 {
            lines.push(format!(
                "SVC {} slot=0 id={} count={} qcount={} flags={:#x}{}{}",
                frontend_text(key),
                service_id_of(entry),
                entry.count,
                entry.qcount,
                entry.flags,
                if entry.flags2 != 0 {
                    format!(" flags2={:#x}", entry.flags2)
                } else {
                    String::new()
                },
                if entry.flags & SERVICE_F_AFFINITY != 0 {
                    format!(" affinity={}s", entry.backend_id)
                } else {
                    String::new()
                }
            ));
        } else {
            lines.push(format!(
                "SVC {} slot={} backend={}",
                frontend_text(key),
                key.slot(),
                backend_id_of(entry)
            ));
        }
    }
    for (id, backend) in &content.backends {
        let (addr, port) = backend_addr_of(backend);
        let state = if backend.state() == lb_common::service::BACKEND_STATE_ACTIVE {
            "active"
        } else {
            "terminating"
        };
        lines.push(format!(
            "BE {id} {}/{} state={state} flags={:#x}",
            addr_port(addr, port),
            proto_text(backend.proto()),
            backend.flags()
        ));
    }
    for (id, revnat) in &content.revnat {
        let (vip, port) = revnat_addr_of(revnat);
        lines.push(format!("REV {id} {}", addr_port(vip, port)));
    }
    for range in &content.source_ranges {
        lines.push(format!(
            "SRC {} {}/{}",
            range.service, range.addr, range.prefix_len
        ));
    }
    lines.sort();
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    out
}
