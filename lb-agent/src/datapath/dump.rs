//! The maps as text and as service views: what `lbctl service list` and `lbctl bpf lb list`
//! print and what the control-plane tests compare. Reads only; never writes.
//!
//! Both families go through the same functions (`lb_entries_of`, `services_of`), generic over
//! the services map's key ([`FrontendKey`]: `ServiceKey4`, `ServiceKey6`) and the backends
//! map's value ([`BackendValue`]); addresses are written by `lb_api::addr`, so IPv6 ones read
//! `[fd00::1]:80/TCP` as in Cilium. The IPv6 maps are read straight from their pins
//! ([`read_v6`]) until `MapsContent` carries them.
use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, path::Path};

use aya::maps::{HashMap, Map, MapData};
use lb_api::addr::{L4Addr, ipv6};
use lb_common::{
    maps as names,
    service::{
        Backend4, Backend6, SERVICE_F_AFFINITY, SERVICE_F_EXTERNAL_IP, SERVICE_F_KIND_MASK,
        SERVICE_F_LOAD_BALANCER, SERVICE_F_LOCAL, SERVICE_F_NODE_PORT, SERVICE_F2_SOURCE_RANGE,
        ServiceEntry, ServiceKey4, ServiceKey6,
    },
};

use super::{
    BackendId, Error, MapsContent, ServiceId,
    maps::{backend_addr_of, backend_id_of, frontend_of, revnat_addr_of, service_id_of},
};
use crate::model::BackendState;

/// A key of a services map, of either family.
pub trait FrontendKey: Ord + Copy {
    /// What a master entry's backend column shows: `0.0.0.0:0` or `[::]:0`.
    const NO_BACKEND: &'static str;
    /// The frontend in host byte order: (vip, port, proto).
    fn frontend(&self) -> (IpAddr, u16, u8);
    /// 0 for the master entry, 1.. for the backend slots.
    fn slot(&self) -> u16;
    /// The same frontend's key of `slot`.
    fn with_slot(&self, slot: u16) -> Self;
}

/// A value of a backends map, of either family.
pub trait BackendValue {
    /// The backend in host byte order: (address, port, proto).
    fn backend(&self) -> (IpAddr, u16, u8);
}

impl FrontendKey for ServiceKey4 {
    const NO_BACKEND: &'static str = "0.0.0.0:0";
    fn frontend(&self) -> (IpAddr, u16, u8) {
        let (vip, port, protocol) = frontend_of(self);
        (vip.into(), port, protocol)
    }
    fn slot(&self) -> u16 {
        self.slot
    }
    fn with_slot(&self, slot: u16) -> Self {
        Self { slot, ..*self }
    }
}

impl FrontendKey for ServiceKey6 {
    const NO_BACKEND: &'static str = "[::]:0";
    fn frontend(&self) -> (IpAddr, u16, u8) {
        (ipv6(self.vip).into(), u16::from_be(self.port), self.proto)
    }
    fn slot(&self) -> u16 {
        self.slot
    }
    fn with_slot(&self, slot: u16) -> Self {
        Self { slot, ..*self }
    }
}

impl BackendValue for Backend4 {
    fn backend(&self) -> (IpAddr, u16, u8) {
        let (addr, port) = backend_addr_of(self);
        (addr.into(), port, self.proto)
    }
}

impl BackendValue for Backend6 {
    fn backend(&self) -> (IpAddr, u16, u8) {
        (ipv6(self.addr).into(), u16::from_be(self.port), self.proto)
    }
}

/// `LB6_SERVICES` and `LB6_BACKENDS` as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct V6Content {
    /// `LB6_SERVICES`.
    pub services: BTreeMap<ServiceKey6, ServiceEntry>,
    /// `LB6_BACKENDS`.
    pub backends: BTreeMap<BackendId, Backend6>,
}

/// Reads `LB6_SERVICES` and `LB6_BACKENDS` from their pins in `pin_dir`; empty when the loaded
/// object has no IPv6 maps (no pin).
pub fn read_v6(pin_dir: &Path) -> Result<V6Content, Error> {
    let mut content = V6Content::default();
    let open = |name: &'static str| -> Result<Option<MapData>, Error> {
        let path = pin_dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        MapData::from_pin(path).map(Some).map_err(|err| Error::Map {
            action: "open",
            map: name,
            source: Box::new(err),
        })
    };
    let read_err = |map: &'static str| {
        move |err| Error::Map {
            action: "read",
            map,
            source: Box::new(err),
        }
    };
    let type_err = |map: &'static str| {
        move |err| Error::MapType {
            map,
            source: Box::new(err),
        }
    };
    if let Some(data) = open(names::LB6_SERVICES)? {
        let map: HashMap<MapData, ServiceKey6, ServiceEntry> =
            HashMap::try_from(Map::HashMap(data)).map_err(type_err(names::LB6_SERVICES))?;
        for item in map.iter() {
            let (key, entry) = item.map_err(read_err(names::LB6_SERVICES))?;
            content.services.insert(key, entry);
        }
    }
    if let Some(data) = open(names::LB6_BACKENDS)? {
        let map: HashMap<MapData, u32, Backend6> =
            HashMap::try_from(Map::HashMap(data)).map_err(type_err(names::LB6_BACKENDS))?;
        for item in map.iter() {
            let (id, backend) = item.map_err(read_err(names::LB6_BACKENDS))?;
            content.backends.insert(BackendId(id), backend);
        }
    }
    Ok(content)
}

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
    /// `addr:port/PROTO` of a slot's backend; `0.0.0.0:0` for a master entry.
    pub backend: String,
    /// A slot's backend id; 0 for a master entry.
    pub backend_id: BackendId,
    /// A master entry's kind and flags; a wildcard entry's `VIP`.
    pub flags: Vec<&'static str>,
}

/// Every entry of the IPv4 services map, by frontend (address, port, protocol) then slot.
pub fn lb_entries(content: &MapsContent) -> Vec<LbEntryView> {
    lb_entries_of(&content.services, &content.backends)
}

/// Every entry of the IPv6 services map, by frontend then slot.
pub fn lb_entries6(content: &V6Content) -> Vec<LbEntryView> {
    lb_entries_of(&content.services, &content.backends)
}

/// Every entry of a services map of either family, by frontend (address, port, protocol)
/// then slot.
pub fn lb_entries_of<K: FrontendKey, B: BackendValue>(
    services: &BTreeMap<K, ServiceEntry>,
    backends: &BTreeMap<BackendId, B>,
) -> Vec<LbEntryView> {
    let mut keys: Vec<&K> = services.keys().collect();
    keys.sort_by_key(|key| (key.frontend(), key.slot()));
    keys.into_iter()
        .map(|key| {
            let entry = &services[key];
            let master = services.get(&key.with_slot(0));
            let rev_nat = master.map_or(ServiceId(0), service_id_of);
            let (vip, _, protocol) = key.frontend();
            if protocol == 0 {
                return LbEntryView {
                    frontend: vip.to_string(),
                    slot: 0,
                    rev_nat: ServiceId(0),
                    backend: K::NO_BACKEND.to_owned(),
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
                    backend: K::NO_BACKEND.to_owned(),
                    backend_id: BackendId(0),
                    flags,
                };
            }
            let id = backend_id_of(entry);
            let backend = backends
                .get(&id)
                .map_or_else(|| "(missing)".to_owned(), backend_text);
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

/// `vip:port/PROTO`, `[vip]:port/PROTO` for IPv6.
fn frontend_text<K: FrontendKey>(key: &K) -> String {
    let (vip, port, protocol) = key.frontend();
    L4Addr::new(vip, port, protocol).to_string()
}

/// `addr:port/PROTO`, `[addr]:port/PROTO` for IPv6.
fn backend_text<B: BackendValue>(backend: &B) -> String {
    let (addr, port, protocol) = backend.backend();
    L4Addr::new(addr, port, protocol).to_string()
}

/// Every IPv4 frontend (wildcard entries left out), sorted by service id.
pub fn services(content: &MapsContent) -> Vec<ServiceView> {
    services_of(&content.services, &content.backends)
}

/// Every IPv6 frontend (wildcard entries left out), sorted by service id.
pub fn services6(content: &V6Content) -> Vec<ServiceView> {
    services_of(&content.services, &content.backends)
}

/// Every frontend of a services map of either family (wildcard entries left out), sorted by
/// service id.
pub fn services_of<K: FrontendKey, B: BackendValue>(
    services: &BTreeMap<K, ServiceEntry>,
    backends: &BTreeMap<BackendId, B>,
) -> Vec<ServiceView> {
    let mut views: Vec<ServiceView> = services
        .iter()
        .filter(|(key, _)| key.slot() == 0 && key.frontend().2 != 0)
        .map(|(key, master)| {
            let total = master.count.saturating_add(master.qcount);
            let backends = (1..=total)
                .filter_map(|slot| {
                    let id = backend_id_of(services.get(&key.with_slot(slot))?);
                    let backend = backends.get(&id)?;
                    Some(BackendView {
                        id,
                        address: backend_text(backend),
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
/// `SRC 1 192.168.0.0/16` (a source range of service 1).
pub fn render(content: &MapsContent) -> String {
    let mut lines = Vec::new();
    for (key, entry) in &content.services {
        if key.proto == 0 && key.port == 0 {
            let (vip, _, _) = frontend_of(key);
            lines.push(format!("VIP {vip}"));
        } else if key.slot == 0 {
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
                key.slot,
                backend_id_of(entry)
            ));
        }
    }
    for (id, backend) in &content.backends {
        let state = if backend.state == lb_common::service::BACKEND_STATE_ACTIVE {
            "active"
        } else {
            "terminating"
        };
        lines.push(format!(
            "BE {id} {} state={state} flags={:#x}",
            backend_text(backend),
            backend.flags
        ));
    }
    for (id, revnat) in &content.revnat {
        let (vip, port) = revnat_addr_of(revnat);
        lines.push(format!("REV {id} {vip}:{port}"));
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

#[cfg(test)]
mod tests {
    use lb_common::{
        addr6_from_octets, proto,
        service::{BACKEND_STATE_ACTIVE, BACKEND_STATE_TERMINATING, SERVICE_F_LOCAL},
    };

    use super::*;
    use crate::datapath::maps::{master_entry, slot_entry};

    fn addr6(text: &str) -> lb_common::Addr6 {
        addr6_from_octets(text.parse::<std::net::Ipv6Addr>().expect("ipv6").octets())
    }

    fn backend6(text: &str, port: u16, state: u8) -> Backend6 {
        Backend6 {
            addr: addr6(text),
            port: port.to_be(),
            proto: proto::TCP,
            state,
            ..Backend6::default()
        }
    }

    /// A dual-stack nginx's IPv6 frontend (service 4: two active backends, one draining) and
    /// its VIP's wildcard entry, as the IPv6 sync will write them.
    fn nginx6() -> V6Content {
        let vip = addr6("fd00:96::e5:43");
        let key = |slot| ServiceKey6::new(vip, 80u16.to_be(), proto::TCP, slot);
        let mut content = V6Content::default();
        content.services.insert(
            key(0),
            master_entry(ServiceId(4), 2, 1, SERVICE_F_LOCAL, 0, None),
        );
        for (slot, id) in [(1, 7), (2, 8), (3, 9)] {
            content
                .services
                .insert(key(slot), slot_entry(BackendId(id)));
        }
        content
            .services
            .insert(ServiceKey6::new(vip, 0, 0, 0), ServiceEntry::default());
        content.backends.insert(
            BackendId(7),
            backend6("fd00:10:112:1::c2", 80, BACKEND_STATE_ACTIVE),
        );
        content.backends.insert(
            BackendId(8),
            backend6("fd00:10:112:1::5a", 80, BACKEND_STATE_ACTIVE),
        );
        content.backends.insert(
            BackendId(9),
            backend6("fd00:10:112:0::b", 8080, BACKEND_STATE_TERMINATING),
        );
        content
    }

    #[test]
    fn ipv6_services_list_bracketed_frontends_and_backends_by_slot() {
        let views = services6(&nginx6());
        assert_eq!(
            views.len(),
            1,
            "the wildcard entry is not a service: {views:?}"
        );
        let view = &views[0];
        assert_eq!(
            (
                view.id,
                view.frontend.as_str(),
                view.kind,
                view.flags.clone()
            ),
            (
                ServiceId(4),
                "[fd00:96::e5:43]:80/TCP",
                "ClusterIP",
                vec!["Local"]
            )
        );
        let backends: Vec<(u32, &str, BackendState)> = view
            .backends
            .iter()
            .map(|b| (b.id.0, b.address.as_str(), b.state))
            .collect();
        assert_eq!(
            backends,
            [
                (7, "[fd00:10:112:1::c2]:80/TCP", BackendState::Active),
                (8, "[fd00:10:112:1::5a]:80/TCP", BackendState::Active),
                (9, "[fd00:10:112::b]:8080/TCP", BackendState::Terminating),
            ]
        );
    }

    #[test]
    fn ipv6_lb_entries_read_like_ciliums_with_unspecified_master_backends() {
        let mut content = nginx6();
        // A slot whose backend is gone shows as missing rather than vanishing.
        content.backends.remove(&BackendId(9));
        let rows: Vec<String> = lb_entries6(&content)
            .iter()
            .map(|e| {
                format!(
                    "{} {} ({}) ({}) {:?} id={}",
                    e.frontend, e.backend, e.rev_nat, e.slot, e.flags, e.backend_id
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                "fd00:96::e5:43 [::]:0 (0) (0) [\"VIP\"] id=0",
                "[fd00:96::e5:43]:80/TCP [::]:0 (4) (0) [\"ClusterIP\", \"Local\"] id=0",
                "[fd00:96::e5:43]:80/TCP [fd00:10:112:1::c2]:80/TCP (4) (1) [] id=7",
                "[fd00:96::e5:43]:80/TCP [fd00:10:112:1::5a]:80/TCP (4) (2) [] id=8",
                "[fd00:96::e5:43]:80/TCP (missing) (4) (3) [] id=9",
            ]
        );
    }

    #[test]
    fn empty_ipv6_maps_list_nothing() {
        assert!(services6(&V6Content::default()).is_empty());
        assert!(lb_entries6(&V6Content::default()).is_empty());
    }
}
