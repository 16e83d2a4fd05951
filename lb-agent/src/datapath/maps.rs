//! The load balancer's maps behind one trait, `LbMaps`, so that `sync/` can run against the
//! kernel (`AyaMaps`) or an in-memory fake (`fake::FakeMaps`).
//!
//! This is the only place that converts between host and network byte order: the `*_key` and
//! `*_value` functions build `lb-common` structs from plain addresses and ports, and
//! `frontend_of` / `backend_addr_of` read them back.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuHashMap},
};
use lb_common::{
    config::DatapathConfig,
    maps as names,
    metrics::{MetricKey, MetricValue},
    service::{Backend4, RevNat4, ServiceEntry, ServiceKey4},
};

use super::{Error, batch};

/// Everything `sync/` programs: the services, backends and reverse-NAT maps as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapsContent {
    /// `LB4_SERVICES`.
    pub services: BTreeMap<ServiceKey4, ServiceEntry>,
    /// `LB4_BACKENDS`.
    pub backends: BTreeMap<u32, Backend4>,
    /// `LB4_REVNAT`.
    pub revnat: BTreeMap<u16, RevNat4>,
}

/// Write access to the load balancer's maps. Every write is idempotent.
pub trait LbMaps {
    /// Inserts or replaces a backend.
    fn upsert_backend(&mut self, id: u32, backend: &Backend4) -> Result<(), Error>;
    /// Removes a backend; absent is fine.
    fn delete_backend(&mut self, id: u32) -> Result<(), Error>;
    /// Inserts or replaces a service slot (master or backend slot).
    fn upsert_service(&mut self, key: &ServiceKey4, entry: &ServiceEntry) -> Result<(), Error>;
    /// Removes a service slot; absent is fine.
    fn delete_service(&mut self, key: &ServiceKey4) -> Result<(), Error>;
    /// Inserts or replaces a reverse-NAT entry.
    fn upsert_revnat(&mut self, id: u16, revnat: &RevNat4) -> Result<(), Error>;
    /// Removes a reverse-NAT entry; absent is fine.
    fn delete_revnat(&mut self, id: u16) -> Result<(), Error>;
    /// Inserts or replaces backends in order; after a failure a prefix is applied.
    fn upsert_backends(&mut self, entries: &[(u32, Backend4)]) -> Result<(), Error> {
        entries
            .iter()
            .try_for_each(|(id, backend)| self.upsert_backend(*id, backend))
    }
    /// Inserts or replaces service slots in order; after a failure a prefix is applied.
    fn upsert_services(&mut self, entries: &[(ServiceKey4, ServiceEntry)]) -> Result<(), Error> {
        entries
            .iter()
            .try_for_each(|(key, entry)| self.upsert_service(key, entry))
    }
    /// Inserts or replaces reverse-NAT entries in order; after a failure a prefix is applied.
    fn upsert_revnats(&mut self, entries: &[(u16, RevNat4)]) -> Result<(), Error> {
        entries
            .iter()
            .try_for_each(|(id, revnat)| self.upsert_revnat(*id, revnat))
    }
    /// Removes service slots in order; absent ones are fine.
    fn delete_services(&mut self, keys: &[ServiceKey4]) -> Result<(), Error> {
        keys.iter().try_for_each(|key| self.delete_service(key))
    }
    /// Removes backends in order; absent ones are fine.
    fn delete_backends(&mut self, ids: &[u32]) -> Result<(), Error> {
        ids.iter().try_for_each(|id| self.delete_backend(*id))
    }
    /// Removes reverse-NAT entries in order; absent ones are fine.
    fn delete_revnats(&mut self, ids: &[u16]) -> Result<(), Error> {
        ids.iter().try_for_each(|id| self.delete_revnat(*id))
    }
    /// Replaces the datapath configuration.
    fn set_config(&mut self, config: &DatapathConfig) -> Result<(), Error>;
    /// Reads the services, backends and reverse-NAT maps.
    fn read(&self) -> Result<MapsContent, Error>;
}

/// The kernel's maps, taken out of the loaded object.
pub struct AyaMaps {
    services: HashMap<MapData, ServiceKey4, ServiceEntry>,
    backends: HashMap<MapData, u32, Backend4>,
    revnat: HashMap<MapData, u16, RevNat4>,
    config: Array<MapData, DatapathConfig>,
    metrics: PerCpuHashMap<MapData, MetricKey, MetricValue>,
    /// Duplicates of the three maps' descriptors, for batch writes.
    services_fd: OwnedFd,
    backends_fd: OwnedFd,
    revnat_fd: OwnedFd,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    Ok(take_with_fd(ebpf, name)?.0)
}

/// Takes a map and a duplicate of its descriptor (aya's typed maps do not lend theirs).
fn take_with_fd<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<(T, OwnedFd), Error>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| Error::MapType {
        map: name,
        source: "not in the object".into(),
    })?;
    let fd = match &map {
        aya::maps::Map::HashMap(data)
        | aya::maps::Map::LruHashMap(data)
        | aya::maps::Map::Array(data)
        | aya::maps::Map::PerCpuHashMap(data)
        | aya::maps::Map::RingBuf(data) => data.fd().as_fd().try_clone_to_owned(),
        _ => Err(std::io::Error::other("unexpected map type")),
    }
    .map_err(|err| Error::MapType {
        map: name,
        source: Box::new(err),
    })?;
    let typed = T::try_from(map).map_err(|err| Error::MapType {
        map: name,
        source: Box::new(err),
    })?;
    Ok((typed, fd))
}

impl AyaMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let (services, services_fd) = take_with_fd(ebpf, names::LB4_SERVICES)?;
        let (backends, backends_fd) = take_with_fd(ebpf, names::LB4_BACKENDS)?;
        let (revnat, revnat_fd) = take_with_fd(ebpf, names::LB4_REVNAT)?;
        Ok(Self {
            services,
            backends,
            revnat,
            config: take(ebpf, names::LB_CONFIG)?,
            metrics: take(ebpf, names::LB_METRICS)?,
            services_fd,
            backends_fd,
            revnat_fd,
        })
    }

    /// Drop counters summed over CPUs, keyed by (reason, hook).
    pub fn drop_counters(&self) -> Result<BTreeMap<(u8, u8), MetricValue>, Error> {
        let mut out = BTreeMap::new();
        for item in self.metrics.iter() {
            let (key, per_cpu) = item.map_err(|err| map_err("read", names::LB_METRICS, err))?;
            let total = per_cpu
                .iter()
                .fold(MetricValue::default(), |acc, v| MetricValue {
                    packets: acc.packets + v.packets,
                    bytes: acc.bytes + v.bytes,
                });
            out.insert((key.reason, key.hook), total);
        }
        Ok(out)
    }

    /// The datapath configuration in force.
    pub fn config(&self) -> Result<DatapathConfig, Error> {
        self.config
            .get(&0, 0)
            .map_err(|err| map_err("read", names::LB_CONFIG, err))
    }
}

/// Maps an update error, recognising a full map (E2BIG from a hash map at capacity).
fn update_err(map: &'static str, flag: &'static str, err: MapError) -> Error {
    if let MapError::SyscallError(syscall) = &err
        && syscall.io_error.raw_os_error() == Some(libc::E2BIG)
    {
        return Error::MapFull { map, flag };
    }
    map_err("update", map, err)
}

fn map_err(action: &'static str, map: &'static str, err: MapError) -> Error {
    Error::Map {
        action,
        map,
        source: Box::new(err),
    }
}

/// A failed batch write, recognising a full map.
fn batch_err(map: &'static str, partial: batch::Partial) -> Error {
    if partial.error.raw_os_error() == Some(libc::E2BIG) {
        return Error::MapFull {
            map,
            flag: "bpf-lb-map-max",
        };
    }
    Error::Batch {
        map,
        applied: partial.applied,
        source: partial.error,
    }
}

/// Deletion of an absent key is success: every write is idempotent.
fn ignore_missing(result: Result<(), MapError>, map: &'static str) -> Result<(), Error> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(syscall))
            if syscall.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(err) => Err(map_err("delete", map, err)),
    }
}

impl LbMaps for AyaMaps {
    fn upsert_backend(&mut self, id: u32, backend: &Backend4) -> Result<(), Error> {
        self.backends
            .insert(id, backend, 0)
            .map_err(|err| update_err(names::LB4_BACKENDS, "bpf-lb-map-max", err))
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), Error> {
        ignore_missing(self.backends.remove(&id), names::LB4_BACKENDS)
    }

    fn upsert_service(&mut self, key: &ServiceKey4, entry: &ServiceEntry) -> Result<(), Error> {
        self.services
            .insert(key, entry, 0)
            .map_err(|err| update_err(names::LB4_SERVICES, "bpf-lb-map-max", err))
    }

    fn delete_service(&mut self, key: &ServiceKey4) -> Result<(), Error> {
        ignore_missing(self.services.remove(key), names::LB4_SERVICES)
    }

    fn upsert_revnat(&mut self, id: u16, revnat: &RevNat4) -> Result<(), Error> {
        self.revnat
            .insert(id, revnat, 0)
            .map_err(|err| update_err(names::LB4_REVNAT, "bpf-lb-map-max", err))
    }

    fn delete_revnat(&mut self, id: u16) -> Result<(), Error> {
        ignore_missing(self.revnat.remove(&id), names::LB4_REVNAT)
    }

    fn upsert_backends(&mut self, entries: &[(u32, Backend4)]) -> Result<(), Error> {
        let (keys, values): (Vec<_>, Vec<_>) = entries.iter().copied().unzip();
        batch::update(&self.backends_fd, &keys, &values)
            .map_err(|partial| batch_err(names::LB4_BACKENDS, partial))
    }

    fn upsert_services(&mut self, entries: &[(ServiceKey4, ServiceEntry)]) -> Result<(), Error> {
        let (keys, values): (Vec<_>, Vec<_>) = entries.iter().copied().unzip();
        batch::update(&self.services_fd, &keys, &values)
            .map_err(|partial| batch_err(names::LB4_SERVICES, partial))
    }

    fn upsert_revnats(&mut self, entries: &[(u16, RevNat4)]) -> Result<(), Error> {
        let (keys, values): (Vec<_>, Vec<_>) = entries.iter().copied().unzip();
        batch::update(&self.revnat_fd, &keys, &values)
            .map_err(|partial| batch_err(names::LB4_REVNAT, partial))
    }

    fn delete_services(&mut self, keys: &[ServiceKey4]) -> Result<(), Error> {
        match batch::delete(&self.services_fd, keys) {
            Ok(()) => Ok(()),
            // Someone removed a key already: finish one by one, where absent is fine.
            Err(partial) if partial.error.raw_os_error() == Some(libc::ENOENT) => keys
                [partial.applied..]
                .iter()
                .try_for_each(|key| self.delete_service(key)),
            Err(partial) => Err(batch_err(names::LB4_SERVICES, partial)),
        }
    }

    fn delete_backends(&mut self, ids: &[u32]) -> Result<(), Error> {
        match batch::delete(&self.backends_fd, ids) {
            Ok(()) => Ok(()),
            Err(partial) if partial.error.raw_os_error() == Some(libc::ENOENT) => ids
                [partial.applied..]
                .iter()
                .try_for_each(|id| self.delete_backend(*id)),
            Err(partial) => Err(batch_err(names::LB4_BACKENDS, partial)),
        }
    }

    fn delete_revnats(&mut self, ids: &[u16]) -> Result<(), Error> {
        match batch::delete(&self.revnat_fd, ids) {
            Ok(()) => Ok(()),
            Err(partial) if partial.error.raw_os_error() == Some(libc::ENOENT) => ids
                [partial.applied..]
                .iter()
                .try_for_each(|id| self.delete_revnat(*id)),
            Err(partial) => Err(batch_err(names::LB4_REVNAT, partial)),
        }
    }

    fn set_config(&mut self, config: &DatapathConfig) -> Result<(), Error> {
        self.config
            .set(0, config, 0)
            .map_err(|err| map_err("update", names::LB_CONFIG, err))
    }

    fn read(&self) -> Result<MapsContent, Error> {
        let mut content = MapsContent::default();
        for item in self.services.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB4_SERVICES, err))?;
            content.services.insert(key, value);
        }
        for item in self.backends.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB4_BACKENDS, err))?;
            content.backends.insert(key, value);
        }
        for item in self.revnat.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB4_REVNAT, err))?;
            content.revnat.insert(key, value);
        }
        Ok(content)
    }
}

/// The key of `slot` of the frontend `vip:port/proto` (host byte order in, network out).
pub fn service_key(vip: Ipv4Addr, port: u16, proto: u8, slot: u16) -> ServiceKey4 {
    ServiceKey4::new(u32::from(vip).to_be(), port.to_be(), proto, slot)
}

/// The wildcard master entry's key that marks `vip` as a known VIP.
pub fn wildcard_key(vip: Ipv4Addr) -> ServiceKey4 {
    ServiceKey4::new(u32::from(vip).to_be(), 0, 0, 0)
}

/// A backend value (host byte order in, network out).
pub fn backend_value(addr: Ipv4Addr, port: u16, proto: u8, state: u8, flags: u8) -> Backend4 {
    Backend4 {
        addr: u32::from(addr).to_be(),
        port: port.to_be(),
        proto,
        state,
        flags,
        _pad: [0; 3],
    }
}

/// A reverse-NAT value (host byte order in, network out).
pub fn revnat_value(vip: Ipv4Addr, port: u16) -> RevNat4 {
    RevNat4 {
        vip: u32::from(vip).to_be(),
        port: port.to_be(),
        _pad: 0,
    }
}

/// The frontend of a service key, in host byte order: (vip, port, proto).
pub fn frontend_of(key: &ServiceKey4) -> (Ipv4Addr, u16, u8) {
    (
        Ipv4Addr::from(u32::from_be(key.vip)),
        u16::from_be(key.port),
        key.proto,
    )
}

/// The address and port of a backend, in host byte order.
pub fn backend_addr_of(backend: &Backend4) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from_be(backend.addr)),
        u16::from_be(backend.port),
    )
}

/// A node address for `DatapathConfig::node_addr` (network byte order).
pub fn node_addr_value(addr: Option<Ipv4Addr>) -> u32 {
    addr.map_or(0, |addr| u32::from(addr).to_be())
}
