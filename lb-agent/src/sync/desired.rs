//! The model's desired services as the exact content the maps must hold, with a `ServiceId`
//! per frontend and a `BackendId` per backend taken from `ids` (and the ids of what is gone
//! retired), plus the rev-NAT entries of retired service ids, which outlive their frontends
//! for the replies of flows still in conntrack. Pure: no aya, kube or tokio.
use std::collections::BTreeSet;

use lb_common::{
    proto,
    service::{
        BACKEND_F_REMOTE, BACKEND_STATE_ACTIVE, BACKEND_STATE_TERMINATING, SERVICE_F_CLUSTER_IP,
        SERVICE_F_EXTERNAL_IP, SERVICE_F_LOAD_BALANCER, SERVICE_F_LOCAL, SERVICE_F_NO_ENDPOINTS,
        SERVICE_F_NODE_PORT, SERVICE_F_ROUTABLE, SERVICE_F2_SOURCE_RANGE,
    },
};

use super::{
    ids::{BackendKey, Exhausted, FrontendKey, Ids},
    maglev,
};
use crate::{
    datapath::{MapsContent, SourceRangeEntry, maps},
    model::{BackendState, DesiredService, FrontendKind, LbAlgorithm, Protocol},
};

/// The master entry's flags: the frontend's kind, whether clients outside the cluster may use
/// it (every kind but ClusterIP), whether only local endpoints serve it, and whether the
/// Service has no endpoints at all (refused rather than dropped).
fn service_flags(service: &DesiredService) -> u8 {
    let kind = match service.kind {
        FrontendKind::ClusterIp => SERVICE_F_CLUSTER_IP,
        FrontendKind::NodePort => SERVICE_F_NODE_PORT | SERVICE_F_ROUTABLE,
        FrontendKind::ExternalIp => SERVICE_F_EXTERNAL_IP | SERVICE_F_ROUTABLE,
        FrontendKind::LoadBalancer => SERVICE_F_LOAD_BALANCER | SERVICE_F_ROUTABLE,
    };
    let local = if service.local_only {
        SERVICE_F_LOCAL
    } else {
        0
    };
    let empty = if service.has_any_endpoints {
        0
    } else {
        SERVICE_F_NO_ENDPOINTS
    };
    kind | local | empty
}

/// The master entry's second flags: whether new flows from outside are checked against the
/// frontend's source ranges.
fn service_flags2(service: &DesiredService) -> u8 {
    if service.source_ranges.is_some() {
        SERVICE_F2_SOURCE_RANGE
    } else {
        0
    }
}

pub(super) fn proto_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
    }
}

/// The content the maps must hold for `services`, allocating ids as needed and retiring the
/// ids of frontends and backends that are gone (see `keep_retired_revnat` for what a retired
/// service id keeps). Every frontend selects at random (`desired_content_with` for Maglev).
pub fn desired_content(
    services: &[DesiredService],
    ids: &mut Ids,
) -> Result<MapsContent, Exhausted> {
    desired_content_with(services, ids, &maglev::Settings::default())
}

/// `desired_content` with the node's selection settings: a frontend whose algorithm (its
/// Service's annotation, else the node's default) is Maglev gets a Maglev table of its active
/// backends, each named by `addr:port` with weight 1, and the Maglev flag.
pub fn desired_content_with(
    services: &[DesiredService],
    ids: &mut Ids,
    settings: &maglev::Settings,
) -> Result<MapsContent, Exhausted> {
    let mut content = MapsContent::default();
    let mut live_frontends = BTreeSet::new();
    let mut live_backends = BTreeSet::new();
    for service in services {
        let frontend = service.frontend;
        let proto = proto_number(frontend.protocol);
        let key = FrontendKey {
            vip: frontend.vip,
            port: frontend.port,
            proto,
        };
        if !live_frontends.insert(key) {
            // The model never yields a frontend twice; if it did, the first one wins.
            continue;
        }
        let service_id = ids.service(key)?;
        // Selectable backends first (slots 1..=count), then the draining ones.
        let ordered = service
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .chain(
                service
                    .backends
                    .iter()
                    .filter(|b| b.state == BackendState::Terminating),
            );
        let mut count: u16 = 0;
        let mut qcount: u16 = 0;
        let mut slot: u16 = 0;
        let mut members = Vec::new();
        for backend in ordered {
            let Some(next) = slot.checked_add(1) else {
                break;
            };
            slot = next;
            let backend_key = BackendKey {
                addr: backend.addr,
                port: backend.port,
                proto,
            };
            live_backends.insert(backend_key);
            let backend_id = ids.backend(backend_key)?;
            let (state, counter) = match backend.state {
                BackendState::Active => (BACKEND_STATE_ACTIVE, &mut count),
                BackendState::Terminating => (BACKEND_STATE_TERMINATING, &mut qcount),
            };
            *counter += 1;
            if backend.state == BackendState::Active {
                members.push((
                    maglev::backend_name(backend.addr, backend.port),
                    1,
                    backend_id,
                ));
            }
            let flags = if backend.remote { BACKEND_F_REMOTE } else { 0 };
            let value = maps::backend_value(backend.addr, backend.port, proto, state, flags);
            // A backend shared by several frontends is active if any of them selects it.
            content
                .backends
                .entry(backend_id)
                .and_modify(|existing| existing.state = existing.state.min(state))
                .or_insert(value);
            content.services.insert(
                maps::service_key(frontend.vip, frontend.port, proto, slot),
                maps::slot_entry(backend_id),
            );
        }
        let mut master = maps::master_entry(
            service_id,
            count,
            qcount,
            service_flags(service),
            service_flags2(service),
            service.affinity_timeout_secs,
        );
        if settings.algorithm(service.algorithm) == LbAlgorithm::Maglev && !members.is_empty() {
            members.sort();
            members.dedup_by(|later, first| later.0 == first.0);
            content.maglev.insert(service_id, settings.spec(members));
            master = maps::with_maglev(master);
        }
        content.services.insert(
            maps::service_key(frontend.vip, frontend.port, proto, 0),
            master,
        );
        // Only a ClusterIP is the cluster's own address, with every other port refused; a node
        // address or an external IP also carries traffic that is none of lb's business.
        if service.kind == FrontendKind::ClusterIp {
            content.services.insert(
                maps::wildcard_key(frontend.vip),
                lb_common::service::ServiceEntry::default(),
            );
        }
        content
            .revnat
            .insert(service_id, maps::revnat_value(frontend.vip, frontend.port));
        content
            .source_ranges
            .extend(
                service
                    .source_ranges
                    .iter()
                    .flatten()
                    .map(|range| SourceRangeEntry {
                        service: service_id,
                        addr: range.addr,
                        prefix_len: range.prefix_len,
                    }),
            );
    }
    ids.retire_absent(&live_frontends, &live_backends);
    Ok(content)
}

/// Keeps in `desired` the rev-NAT entries `current` holds for retired service ids: replies of
/// flows created before their frontend went (a port change, a deleted Service) are still
/// reverse-NATed while their conntrack entries live. A retired backend keeps nothing: its
/// `LB4_BACKENDS` entry goes at once, so that its flows choose again (only its id is
/// reserved).
pub fn keep_retired_revnat(desired: &mut MapsContent, current: &MapsContent, ids: &Ids) {
    for id in ids.retired_services() {
        if let Some(revnat) = current.revnat.get(&id) {
            desired.revnat.entry(id).or_insert(*revnat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{datapath::dump, sync::scenarios};

    #[test]
    fn the_default_map_capacity_holds_ten_thousand_services_of_five_backends() {
        use crate::model::BackendState::Active;
        let services: Vec<_> = (0..10_000u32)
            .map(|n| {
                let [_, _, hi, lo] = n.to_be_bytes();
                let backends: Vec<_> = (1..=5u8)
                    .map(|b| ([10, 200 + b, hi, lo], 8080, Active))
                    .collect();
                scenarios::service([10, 96, hi, lo], 80, &backends)
            })
            .collect();
        let mut ids = Ids::restore(&MapsContent::default());
        let content = desired_content(&services, &mut ids).expect("ids");
        let capacity: usize = crate::config::options::lookup("bpf-lb-map-max")
            .expect("option")
            .default
            .parse()
            .expect("a number");
        assert_eq!(content.services.len(), 70_000, "master, 5 slots, wildcard");
        assert!(
            content.services.len() <= capacity,
            "services fit {capacity}"
        );
        assert_eq!(content.backends.len(), 50_000);
        assert!(
            content.backends.len() <= capacity,
            "backends fit {capacity}"
        );
    }

    #[test]
    fn active_backends_take_the_first_slots_and_terminating_ones_follow() {
        let mut ids = Ids::restore(&MapsContent::default());
        let desired = desired_content(&scenarios::all().remove(1), &mut ids).expect("ids");
        assert_eq!(
            dump::render(&desired),
            "BE 1 10.244.1.6:8080/TCP state=active flags=0x0\n\
             BE 2 10.244.1.7:8080/TCP state=active flags=0x0\n\
             BE 3 10.244.1.5:8080/TCP state=terminating flags=0x0\n\
             REV 1 10.96.0.10:80\n\
             SVC 10.96.0.10:80/TCP slot=0 id=1 count=2 qcount=1 flags=0x1\n\
             SVC 10.96.0.10:80/TCP slot=1 backend=1\n\
             SVC 10.96.0.10:80/TCP slot=2 backend=2\n\
             SVC 10.96.0.10:80/TCP slot=3 backend=3\n\
             VIP 10.96.0.10\n"
        );
    }

    #[test]
    fn ids_of_services_and_backends_that_are_gone_are_not_reused_by_the_next_pass() {
        let mut ids = Ids::restore(&MapsContent::default());
        let scenarios = scenarios::all();
        let first = desired_content(&scenarios[0], &mut ids).expect("ids");
        // 10.96.0.10 and its backends are gone: their ids are retired once this pass ends.
        let mut second = desired_content(&scenarios[3], &mut ids).expect("ids");
        keep_retired_revnat(&mut second, &first, &ids);
        assert!(
            dump::render(&second).contains("REV 1 10.96.0.10:80"),
            "the retired service keeps its rev-NAT entry"
        );
        // Both frontends, each with a new backend: 10.96.0.10 takes its retired id back,
        // the new backends take new ids above the retired ones.
        let desired = desired_content(&scenarios[2], &mut ids).expect("ids");
        let text = dump::render(&desired);
        for line in [
            "BE 3 10.244.1.7:8080/TCP",
            "BE 4 10.244.2.1:53/TCP",
            "REV 1 10.96.0.10:80",
            "REV 2 10.96.0.11:53",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
