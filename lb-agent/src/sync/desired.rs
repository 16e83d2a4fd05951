//! The model's desired services as the exact content the maps must hold, with a `ServiceId`
//! per frontend and a `BackendId` per backend taken from `ids` (and the ids of what is gone
//! retired), plus the rev-NAT entries of retired service ids, which outlive their frontends
//! for the replies of flows still in conntrack. Pure: no aya, kube or tokio.
//!
//! The content derives from a [`Programmed`] index: each frontend's own entries, and reference
//! counts for what frontends share (a backend, a VIP's wildcard entry), so that the syncer can
//! change a few frontends and derive the new value of just the keys they touch.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use lb_common::{
    proto,
    service::{
        BACKEND_F_REMOTE, BACKEND_STATE_ACTIVE, BACKEND_STATE_TERMINATING, SERVICE_F_CLUSTER_IP,
        SERVICE_F_EXTERNAL_IP, SERVICE_F_LOAD_BALANCER, SERVICE_F_LOCAL, SERVICE_F_NO_ENDPOINTS,
        SERVICE_F_NODE_PORT, SERVICE_F_ROUTABLE, SERVICE_F2_SOURCE_RANGE, ServiceEntry,
    },
};

use super::{
    ids::{BackendKey, Exhausted, FrontendKey, Ids},
    maglev,
};
use crate::{
    datapath::{
        BackendId, MapsContent, ServiceId, SourceRangeEntry, maps,
        maps::{Backend, MaglevSpec, RevNat, ServiceKey},
    },
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

pub(crate) fn proto_number(protocol: Protocol) -> u8 {
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
    Ok(desired_index(services, ids, settings)?.content())
}

/// [`desired_content_with`] as a [`Programmed`] index, from which the content derives.
pub fn desired_index(
    services: &[DesiredService],
    ids: &mut Ids,
    settings: &maglev::Settings,
) -> Result<Programmed, Exhausted> {
    let mut index = Programmed::default();
    for service in services {
        let key = frontend_key(service);
        if index.frontends.contains_key(&key) {
            // The model never yields a frontend twice; if it did, the first one wins.
            continue;
        }
        let content = frontend_content(service, ids, settings)?;
        index.add(key, content);
    }
    let live_frontends = index.frontends.keys().copied().collect();
    let live_backends = index.backends.values().map(|refs| refs.key).collect();
    ids.retire_absent(&live_frontends, &live_backends);
    // Kept until the next full pass: with full nodes.
    ids.compact();
    index.compact();
    Ok(index)
}

/// The id key of a desired service's frontend.
pub fn frontend_key(service: &DesiredService) -> FrontendKey {
    FrontendKey {
        vip: service.frontend.vip,
        port: service.frontend.port,
        proto: proto_number(service.frontend.protocol),
    }
}

/// What one frontend contributes to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FrontendContent {
    /// Its service id.
    id: ServiceId,
    /// Its master entry (slot 0).
    master: ServiceEntry,
    /// Slot n selects `backends[n - 1]`: the backend's id, key, state and remote flag.
    backends: Vec<(BackendId, BackendKey, u8, bool)>,
    /// True for a ClusterIP, whose VIP gets the wildcard entry.
    wildcard: bool,
    /// Its reverse-NAT entry.
    revnat: RevNat,
    /// Its source ranges (written before the master entry that checks them) and Maglev table.
    extras: Extras,
}

/// What goes with a frontend's master entry in maps of their own: its source-range entries
/// (`LB4_SRC_RANGE` or `LB6_SRC_RANGE`) and, for a Maglev frontend, its table's spec.
pub(crate) type Extras = (Vec<SourceRangeEntry>, Option<Arc<MaglevSpec>>);

/// How many frontends name one backend, by state; the backend's value derives from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BackendRefs {
    key: BackendKey,
    active: u32,
    terminating: u32,
    remote: u32,
}

impl BackendRefs {
    /// Active if any frontend selects it; remote if any frontend's endpoint says so (both
    /// independent of the order frontends were added in).
    fn value(&self) -> Backend {
        let state = if self.active > 0 {
            BACKEND_STATE_ACTIVE
        } else {
            BACKEND_STATE_TERMINATING
        };
        let flags = if self.remote > 0 { BACKEND_F_REMOTE } else { 0 };
        maps::backend_value(self.key.addr, self.key.port, self.key.proto, state, flags)
    }
}

/// What the syncer programmed, by frontend, with reference counts for what frontends share
/// (a backend named by several, the wildcard entry of a VIP with several ports). The map
/// content derives from it, whole ([`Programmed::content`]) or key by key, so that a change to
/// a few frontends is planned over their keys alone.
#[derive(Clone, Debug, Default)]
pub struct Programmed {
    frontends: BTreeMap<FrontendKey, FrontendContent>,
    backends: BTreeMap<BackendId, BackendRefs>,
    vips: BTreeMap<IpAddr, u32>,
    /// Master and slot entries of all frontends (wildcards aside), kept so that counting the
    /// services map's entries is not a walk over every frontend.
    entries: usize,
}

impl Programmed {
    /// Frontends programmed.
    pub fn frontends(&self) -> usize {
        self.frontends.len()
    }

    /// Backends programmed.
    pub fn backends(&self) -> usize {
        self.backends.len()
    }

    /// Whether `key` is programmed.
    pub fn contains(&self, key: &FrontendKey) -> bool {
        self.frontends.contains_key(key)
    }

    /// Rebuilds the tables with full nodes (see `Ids::compact`).
    fn compact(&mut self) {
        self.frontends = std::mem::take(&mut self.frontends).into_iter().collect();
        self.backends = std::mem::take(&mut self.backends).into_iter().collect();
        self.vips = std::mem::take(&mut self.vips).into_iter().collect();
    }

    /// The service ids of the frontends programmed.
    pub fn service_ids(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.frontends.values().map(|frontend| frontend.id)
    }

    /// What `key` contributes, if programmed.
    pub(crate) fn get(&self, key: &FrontendKey) -> Option<&FrontendContent> {
        self.frontends.get(key)
    }

    /// Entries of `LB4_SERVICES` and `LB6_SERVICES` together: masters, slots, wildcards.
    pub fn service_entries(&self) -> usize {
        self.entries + self.vips.len()
    }

    /// Adds a frontend (which must not be there).
    pub(crate) fn add(&mut self, key: FrontendKey, content: FrontendContent) {
        for (id, backend_key, state, remote) in &content.backends {
            let refs = self.backends.entry(*id).or_insert(BackendRefs {
                key: *backend_key,
                active: 0,
                terminating: 0,
                remote: 0,
            });
            if *state == BACKEND_STATE_ACTIVE {
                refs.active += 1;
            } else {
                refs.terminating += 1;
            }
            refs.remote += u32::from(*remote);
        }
        if content.wildcard {
            *self.vips.entry(key.vip).or_default() += 1;
        }
        self.entries += content.backends.len() + 1;
        self.frontends.insert(key, content);
    }

    /// Removes a frontend; backends and VIPs no frontend names any more go with it.
    pub(crate) fn remove(&mut self, key: &FrontendKey) -> Option<FrontendContent> {
        let content = self.frontends.remove(key)?;
        self.entries -= content.backends.len() + 1;
        for (id, _, state, remote) in &content.backends {
            if let std::collections::btree_map::Entry::Occupied(mut entry) =
                self.backends.entry(*id)
            {
                let refs = entry.get_mut();
                if *state == BACKEND_STATE_ACTIVE {
                    refs.active -= 1;
                } else {
                    refs.terminating -= 1;
                }
                refs.remote -= u32::from(*remote);
                if refs.active + refs.terminating == 0 {
                    entry.remove();
                }
            }
        }
        if content.wildcard
            && let std::collections::btree_map::Entry::Occupied(mut entry) =
                self.vips.entry(key.vip)
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
        Some(content)
    }

    /// The whole content of the maps (retired rev-NAT entries aside).
    pub fn content(&self) -> MapsContent {
        let mut content = MapsContent::default();
        for (key, frontend) in &self.frontends {
            for (service_key, entry) in frontend.entries(key) {
                content.services.insert(service_key, entry);
            }
            content.revnat.insert(frontend.id, frontend.revnat);
            let (ranges, maglev) = &frontend.extras;
            content.source_ranges.extend(ranges.iter().copied());
            if let Some(spec) = maglev {
                content.maglev.insert(frontend.id, MaglevSpec::clone(spec));
            }
        }
        for vip in self.vips.keys() {
            content
                .services
                .insert(maps::wildcard_key(*vip), ServiceEntry::default());
        }
        for (id, refs) in &self.backends {
            content.backends.insert(*id, refs.value());
        }
        content
    }

    /// The entry `key` must hold in `LB4_SERVICES` or `LB6_SERVICES`, if any.
    pub fn service_entry(&self, key: &ServiceKey) -> Option<ServiceEntry> {
        let (vip, port, proto) = maps::frontend_of(key);
        if proto == 0 {
            return self.vips.contains_key(&vip).then(ServiceEntry::default);
        }
        let frontend = self.frontends.get(&FrontendKey { vip, port, proto })?;
        match key.slot() {
            0 => Some(frontend.master),
            slot => frontend
                .backends
                .get(usize::from(slot) - 1)
                .map(|(id, ..)| maps::slot_entry(*id)),
        }
    }

    /// The value `id` must hold in `LB4_BACKENDS` or `LB6_BACKENDS`, if any.
    pub fn backend(&self, id: BackendId) -> Option<Backend> {
        self.backends.get(&id).map(BackendRefs::value)
    }
}

impl FrontendContent {
    /// The service keys this frontend writes and their entries: slots, master, wildcard.
    fn entries(&self, key: &FrontendKey) -> impl Iterator<Item = (ServiceKey, ServiceEntry)> + '_ {
        let (vip, port, proto) = (key.vip, key.port, key.proto);
        let slots = self
            .backends
            .iter()
            .zip(1u16..)
            .map(move |((id, ..), slot)| {
                (
                    maps::service_key(vip, port, proto, slot),
                    maps::slot_entry(*id),
                )
            });
        slots.chain(std::iter::once((
            maps::service_key(vip, port, proto, 0),
            self.master,
        )))
    }

    /// Every services-map key (`LB4_SERVICES` or `LB6_SERVICES`) this frontend writes, the
    /// wildcard entry of its VIP included.
    pub(crate) fn service_keys(&self, key: &FrontendKey) -> impl Iterator<Item = ServiceKey> + '_ {
        let wildcard = self.wildcard.then(|| maps::wildcard_key(key.vip));
        self.entries(key).map(|(k, _)| k).chain(wildcard)
    }

    /// The ids and keys of the backends it names.
    pub(crate) fn backend_ids(&self) -> impl Iterator<Item = (BackendId, BackendKey)> + '_ {
        self.backends.iter().map(|(id, key, ..)| (*id, *key))
    }

    /// Its service id and reverse-NAT entry.
    pub(crate) fn revnat(&self) -> (ServiceId, RevNat) {
        (self.id, self.revnat)
    }

    /// Its source ranges and Maglev table.
    pub(crate) fn extras(&self) -> Extras {
        self.extras.clone()
    }

    /// Its source ranges and Maglev table, borrowed.
    pub(crate) fn extras_ref(&self) -> &Extras {
        &self.extras
    }
}

/// What `service` contributes to the maps, allocating its ids.
pub(crate) fn frontend_content(
    service: &DesiredService,
    ids: &mut Ids,
    settings: &maglev::Settings,
) -> Result<FrontendContent, Exhausted> {
    let frontend = service.frontend;
    let key = frontend_key(service);
    let proto = key.proto;
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
    let mut backends = Vec::with_capacity(service.backends.len());
    let mut members = Vec::new();
    // Slots are u16; the master is slot 0.
    for backend in ordered.take(usize::from(u16::MAX)) {
        let backend_key = BackendKey {
            addr: backend.addr,
            port: backend.port,
            proto,
        };
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
        backends.push((backend_id, backend_key, state, backend.remote));
    }
    let mut master = maps::master_entry(
        service_id,
        count,
        qcount,
        service_flags(service),
        service_flags2(service),
        service.affinity_timeout_secs,
    );
    let mut table = None;
    if settings.algorithm(service.algorithm) == LbAlgorithm::Maglev && !members.is_empty() {
        members.sort();
        members.dedup_by(|later, first| later.0 == first.0);
        table = Some(Arc::new(settings.spec(members)));
        master = maps::with_maglev(master);
    }
    let ranges = service
        .source_ranges
        .iter()
        .flatten()
        .map(|range| SourceRangeEntry {
            service: service_id,
            addr: range.addr,
            prefix_len: range.prefix_len,
        })
        .collect();
    Ok(FrontendContent {
        id: service_id,
        master,
        backends,
        // Only a ClusterIP is the cluster's own address, with every other port refused; a node
        // address or an external IP also carries traffic that is none of lb's business.
        wildcard: service.kind == FrontendKind::ClusterIp,
        revnat: maps::revnat_value(frontend.vip, frontend.port),
        extras: (ranges, table),
    })
}

/// Keeps in `desired` the rev-NAT entries `current` holds for retired service ids: replies of
/// flows created before their frontend went (a port change, a deleted Service) are still
/// reverse-NATed while their conntrack entries live. A retired backend keeps nothing: its
/// backends-map entry goes at once, so that its flows choose again (only its id is
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

    #[test]
    fn a_dual_stack_service_takes_ids_from_one_space_and_its_ipv6_entries_name_the_lb6_maps() {
        use crate::model::{BackendState::Active, FrontendKind, SourceRange};
        let v4 = scenarios::service([10, 96, 0, 10], 80, &[([10, 244, 1, 5], 8080, Active)]);
        let v6 = scenarios::in_v6(v4.clone());
        let mut lb6 = scenarios::in_v6(scenarios::service(
            [203, 0, 113, 10],
            80,
            &[([10, 244, 1, 5], 8080, Active)],
        ));
        lb6.kind = FrontendKind::LoadBalancer;
        lb6.source_ranges = Some(vec![
            SourceRange::new("2001:db8::1".parse().expect("ip"), 64).expect("range"),
        ]);
        let mut ids = Ids::restore(&MapsContent::default());
        let content = desired_content(&[v4, v6, lb6], &mut ids).expect("ids");
        assert_eq!(
            dump::render(&content),
            "BE 1 10.244.1.5:8080/TCP state=active flags=0x0\n\
             BE 2 [fd00::af4:105]:8080/TCP state=active flags=0x0\n\
             REV 1 10.96.0.10:80\n\
             REV 2 [fd00::a60:a]:80\n\
             REV 3 [fd00::cb00:710a]:80\n\
             SRC 3 2001:db8::/64\n\
             SVC 10.96.0.10:80/TCP slot=0 id=1 count=1 qcount=0 flags=0x1\n\
             SVC 10.96.0.10:80/TCP slot=1 backend=1\n\
             SVC [fd00::a60:a]:80/TCP slot=0 id=2 count=1 qcount=0 flags=0x1\n\
             SVC [fd00::a60:a]:80/TCP slot=1 backend=2\n\
             SVC [fd00::cb00:710a]:80/TCP slot=0 id=3 count=1 qcount=0 flags=0x48 flags2=0x1\n\
             SVC [fd00::cb00:710a]:80/TCP slot=1 backend=2\n\
             VIP 10.96.0.10\n\
             VIP fd00::a60:a\n"
        );
        let families = |content: &MapsContent| {
            content
                .services
                .keys()
                .filter(|key| key.family() == crate::model::IpFamily::V6)
                .count()
        };
        assert_eq!(families(&content), 5, "IPv6 masters, slots and wildcard");
    }

    #[test]
    fn an_id_reused_by_the_other_family_deletes_its_old_entry_from_the_old_familys_map() {
        use crate::{
            datapath::fake::FakeMaps,
            model::{BackendState::Active, IpFamily},
            sync::{apply::apply, plan::plan},
        };
        let mut fake = FakeMaps::default();
        let v4 = scenarios::service([10, 96, 0, 10], 80, &[([10, 244, 1, 5], 8080, Active)]);
        let mut ids = Ids::restore(&MapsContent::default());
        let first = desired_content(std::slice::from_ref(&v4), &mut ids).expect("ids");
        let ops = plan(&fake.content, &first);
        apply(&mut fake, &ops).expect("apply");
        // The same ids now name IPv6 entries (as after the quarantine of a retired id ends).
        let second = desired_content(&[scenarios::in_v6(v4)], &mut Ids::default()).expect("ids");
        assert_eq!(second.backends.keys().collect::<Vec<_>>(), [&BackendId(1)]);
        let ops = plan(&fake.content, &second);
        assert!(
            ops.iter().any(|op| matches!(
                op,
                super::super::plan::Op::DeleteBackend(BackendId(1), IpFamily::V4)
            )),
            "{ops:?}"
        );
        assert!(ops.iter().any(|op| matches!(
            op,
            super::super::plan::Op::DeleteRevNat(ServiceId(1), IpFamily::V4)
        )));
        apply(&mut fake, &ops).expect("apply");
        assert_eq!(fake.content, second);
        assert!(plan(&fake.content, &second).is_empty());
    }
}
