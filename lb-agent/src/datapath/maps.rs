//! The load balancer's maps behind one trait, `LbMaps`, so that `sync/` can run against the
//! kernel (`AyaMaps`) or, in tests, in-memory maps (`fake::FakeMaps`).
//!
//! This is the only place that converts between host and network byte order, and between the
//! agent's typed ids (`ServiceId`, `BackendId`) and the raw integers of `lb-common`: the `*_key`,
//! `*_value` and `*_entry` functions build `lb-common` structs from plain addresses, ports and
//! ids, and `frontend_of` / `backend_addr_of` / `*_id_of` read them back.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuHashMap,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
};
use lb_common::{
    config::DatapathConfig,
    filter::FilterWord,
    maps as names,
    metrics::{MetricKey, MetricValue},
    service::{
        Backend4, MAGLEV_CHUNK, MaglevChunk, MaglevKey, RevNat4, SERVICE_F_AFFINITY,
        SERVICE_F2_MAGLEV, SOURCE_RANGE_PREFIX_BITS, ServiceEntry, ServiceKey4, SourceRangeKey4,
    },
};

use super::{Error, batch, vip_filter::VipFilter};

/// A service id: the key of a frontend's `LB4_REVNAT` entry, named by its master entry's
/// `rev_nat`. 0 is never allocated.
///
/// Defined here rather than in `sync::ids` (which allocates them) because `MapsContent` and the
/// `LbMaps` trait are keyed by it, and `datapath/` imports nothing from `sync/`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u16);

/// A backend id: the key of `LB4_BACKENDS`, named by a slot's `backend_id`. 0 is never
/// allocated (a master entry's `backend_id` is 0, or the affinity timeout, and never read as
/// a backend).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

// The ids are exactly as wide as the fields that carry them: this stops compiling if
// `lb-common` changes either width.
const _: fn(&ServiceEntry) -> (ServiceId, BackendId) =
    |entry| (ServiceId(entry.rev_nat), BackendId(entry.backend_id));

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One `LB4_SRC_RANGE` entry: a client prefix (host byte order) a service id admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeEntry {
    /// The service id of the load-balancer frontend.
    pub service: ServiceId,
    /// The first address of the prefix.
    pub addr: Ipv4Addr,
    /// The prefix length, 0-32.
    pub prefix_len: u8,
}

/// Everything `sync/` programs: the services, backends, reverse-NAT and source-range maps as
/// plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapsContent {
    /// `LB4_SERVICES`.
    pub services: BTreeMap<ServiceKey4, ServiceEntry>,
    /// `LB4_BACKENDS`.
    pub backends: BTreeMap<BackendId, Backend4>,
    /// `LB4_REVNAT`.
    pub revnat: BTreeMap<ServiceId, RevNat4>,
    /// `LB4_SRC_RANGE`.
    pub source_ranges: BTreeSet<SourceRangeEntry>,
    /// `LB4_MAGLEV`: what each Maglev frontend's table is built from (the table itself, M
    /// backend ids, is a pure function of this and is only built to be written).
    pub maglev: BTreeMap<ServiceId, MaglevSpec>,
}

/// What a Maglev table is built from: its size, the seed of the backends' hash and the
/// members, sorted by name (`sync::maglev::sorted`), each with the backend id the table's
/// entries are translated to on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaglevSpec {
    /// M.
    pub size: u32,
    /// The seed of the backends' MurmurHash3.
    pub seed: u32,
    /// The members: (name, weight, id), sorted by name.
    pub members: Vec<(String, u16, BackendId)>,
}

impl MaglevSpec {
    /// How many `LB4_MAGLEV` values the table takes.
    pub fn chunks(&self) -> u16 {
        u16::try_from(self.size.div_ceil(MAGLEV_CHUNK as u32)).unwrap_or(u16::MAX)
    }

    /// What `read` knows of a table it finds in the map: only how many chunks it has (no
    /// members, so it never equals a desired spec, and the next pass rewrites it).
    pub fn read_back(chunks: u16) -> Self {
        Self {
            size: u32::from(chunks) * MAGLEV_CHUNK as u32,
            seed: 0,
            members: Vec::new(),
        }
    }
}

/// A table's `LB4_MAGLEV` values: entry i (a backend id) at chunk i / MAGLEV_CHUNK, the rest of
/// the last chunk 0.
pub fn maglev_chunks(id: ServiceId, table: &[BackendId]) -> Vec<(MaglevKey, MaglevChunk)> {
    table
        .chunks(MAGLEV_CHUNK)
        .enumerate()
        .map(|(i, ids)| {
            let mut chunk = MaglevChunk::default();
            for (slot, id) in chunk.backend_ids.iter_mut().zip(ids) {
                *slot = id.0;
            }
            let key = MaglevKey {
                rev_nat: id.0,
                chunk: u16::try_from(i).unwrap_or(u16::MAX),
            };
            (key, chunk)
        })
        .collect()
}

/// Write access to the load balancer's maps. Every write is idempotent.
pub trait LbMaps {
    /// Inserts or replaces a backend.
    fn upsert_backend(&mut self, id: BackendId, backend: &Backend4) -> Result<(), Error>;
    /// Removes a backend; absent is fine.
    fn delete_backend(&mut self, id: BackendId) -> Result<(), Error>;
    /// Inserts or replaces a service slot (master or backend slot).
    fn upsert_service(&mut self, key: &ServiceKey4, entry: &ServiceEntry) -> Result<(), Error>;
    /// Removes a service slot; absent is fine.
    fn delete_service(&mut self, key: &ServiceKey4) -> Result<(), Error>;
    /// Inserts or replaces a reverse-NAT entry.
    fn upsert_revnat(&mut self, id: ServiceId, revnat: &RevNat4) -> Result<(), Error>;
    /// Removes a reverse-NAT entry; absent is fine.
    fn delete_revnat(&mut self, id: ServiceId) -> Result<(), Error>;
    /// Inserts a source range (idempotent).
    fn upsert_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error>;
    /// Removes a source range; absent is fine.
    fn delete_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error>;
    /// Inserts or replaces backends in order; after a failure a prefix is applied.
    fn upsert_backends(&mut self, entries: &[(BackendId, Backend4)]) -> Result<(), Error> {
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
    fn upsert_revnats(&mut self, entries: &[(ServiceId, RevNat4)]) -> Result<(), Error> {
        entries
            .iter()
            .try_for_each(|(id, revnat)| self.upsert_revnat(*id, revnat))
    }
    /// Removes service slots in order; absent ones are fine.
    fn delete_services(&mut self, keys: &[ServiceKey4]) -> Result<(), Error> {
        keys.iter().try_for_each(|key| self.delete_service(key))
    }
    /// Removes backends in order; absent ones are fine.
    fn delete_backends(&mut self, ids: &[BackendId]) -> Result<(), Error> {
        ids.iter().try_for_each(|id| self.delete_backend(*id))
    }
    /// Removes reverse-NAT entries in order; absent ones are fine.
    fn delete_revnats(&mut self, ids: &[ServiceId]) -> Result<(), Error> {
        ids.iter().try_for_each(|id| self.delete_revnat(*id))
    }
    /// Writes a frontend's Maglev table (M backend ids, built from `spec`), replacing each chunk
    /// whole, and removes chunks of an older, longer table up to `old_chunks`.
    fn write_maglev(
        &mut self,
        id: ServiceId,
        spec: &MaglevSpec,
        table: &[BackendId],
        old_chunks: u16,
    ) -> Result<(), Error>;
    /// Removes a frontend's Maglev table of `chunks` chunks; absent ones are fine.
    fn delete_maglev(&mut self, id: ServiceId, chunks: u16) -> Result<(), Error>;
    /// Replaces the datapath configuration.
    fn set_config(&mut self, config: &DatapathConfig) -> Result<(), Error>;
    /// Reads the services, backends and reverse-NAT maps.
    fn read(&self) -> Result<MapsContent, Error>;
}

/// The kernel's maps, taken out of the loaded object.
pub struct AyaMaps {
    services: HashMap<MapData, ServiceKey4, ServiceEntry>,
    // Keyed by the raw ids, which aya can copy in and out; the `LbMaps` methods convert.
    backends: HashMap<MapData, u32, Backend4>,
    revnat: HashMap<MapData, u16, RevNat4>,
    source_ranges: LpmTrie<MapData, SourceRangeKey4, u8>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    config: Array<MapData, DatapathConfig>,
    metrics: PerCpuHashMap<MapData, MetricKey, MetricValue>,
    /// `LB4_VIP_FILTER`, kept in step with the master entries of `services` by `filter`.
    vip_filter_map: Array<MapData, FilterWord>,
    vip_filter: VipFilter,
    /// `LB_GENERATION`, bumped after every write that may take a flow's frontend or backend
    /// away (see `bump_generation`).
    generation_map: Array<MapData, u32>,
    /// Its value as last written (never 0 once `take` returns).
    generation: u32,
    /// Duplicates of the three maps' descriptors, for batch writes.
    services_fd: OwnedFd,
    backends_fd: OwnedFd,
    revnat_fd: OwnedFd,
    maglev_fd: OwnedFd,
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
        | aya::maps::Map::LpmTrie(data)
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
        let (maglev, maglev_fd) = take_with_fd(ebpf, names::LB4_MAGLEV)?;
        let mut maps = Self {
            services,
            backends,
            revnat,
            source_ranges: take(ebpf, names::LB4_SRC_RANGE)?,
            maglev,
            maglev_fd,
            config: take(ebpf, names::LB_CONFIG)?,
            metrics: take(ebpf, names::LB_METRICS)?,
            vip_filter_map: take(ebpf, names::LB4_VIP_FILTER)?,
            vip_filter: VipFilter::default(),
            generation_map: take(ebpf, names::LB_GENERATION)?,
            generation: 0,
            services_fd,
            backends_fd,
            revnat_fd,
        };
        // The master entries already there (pinned maps of an earlier agent) are counted, and
        // their flags set (flags of a crashed agent's deleted frontends may linger: a flag set
        // too long costs a packet the full path, nothing more).
        let masters: Vec<ServiceKey4> = maps
            .services
            .keys()
            .filter(|key| key.as_ref().map_or(true, |key| key.slot == 0))
            .collect::<Result<_, _>>()
            .map_err(|err| map_err("read", names::LB4_SERVICES, err))?;
        for key in &masters {
            maps.vip_filter.add(key);
        }
        for word in maps.vip_filter.set_words() {
            maps.write_vip_word(word)?;
        }
        // Pinned by an earlier agent, the generation goes on from its value; a new map starts
        // at 1 (0 is no generation).
        maps.generation = maps
            .generation_map
            .get(&0, 0)
            .map_err(|err| map_err("read", names::LB_GENERATION, err))?;
        if maps.generation == 0 {
            maps.bump_generation()?;
        }
        Ok(maps)
    }

    /// Moves `LB_GENERATION` on (skipping 0), after a write that may have taken a frontend or
    /// a backend away or rewritten a backend: every tracked flow then looks its frontend and
    /// backend up again at its next packet (see `lb_common::maps::LB_GENERATION`).
    fn bump_generation(&mut self) -> Result<(), Error> {
        let next = self.generation.wrapping_add(1).max(1);
        self.generation_map
            .set(0, next, 0)
            .map_err(|err| map_err("update", names::LB_GENERATION, err))?;
        self.generation = next;
        Ok(())
    }

    /// `result` of a write that may have taken a frontend or backend away, after bumping the
    /// generation: even when the write failed part of the way (a batch applies a prefix).
    fn bumped(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        let bumped = self.bump_generation();
        result.and(bumped)
    }

    /// The current `LB_GENERATION`.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Writes word `word` of `LB4_VIP_FILTER` as `vip_filter` says.
    fn write_vip_word(&mut self, word: u32) -> Result<(), Error> {
        self.vip_filter_map
            .set(word, self.vip_filter.word(word), 0)
            .map_err(|err| map_err("update", names::LB4_VIP_FILTER, err))
    }

    /// Counts master entries about to be written, setting their addresses' flags first.
    fn flag_masters<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k ServiceKey4>,
    ) -> Result<(), Error> {
        let words: BTreeSet<u32> = keys
            .into_iter()
            .filter_map(|key| self.vip_filter.add(key))
            .collect();
        words
            .into_iter()
            .try_for_each(|word| self.write_vip_word(word))
    }

    /// Forgets master entries just deleted, clearing the flags no address needs any more.
    fn unflag_masters<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k ServiceKey4>,
    ) -> Result<(), Error> {
        let words: BTreeSet<u32> = keys
            .into_iter()
            .filter_map(|key| self.vip_filter.remove(key))
            .collect();
        words
            .into_iter()
            .try_for_each(|word| self.write_vip_word(word))
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

/// Deletes `keys` from `map` in one batch. The kernel stops a batch at a missing key (ENOENT):
/// someone removed it already, so the rest is finished one by one with `remove`, where absent
/// is fine.
fn delete_batch<K: Copy>(
    fd: &OwnedFd,
    map: &'static str,
    keys: &[K],
    mut remove: impl FnMut(K) -> Result<(), MapError>,
) -> Result<(), Error> {
    match batch::delete(fd, keys) {
        Ok(()) => Ok(()),
        Err(partial) if partial.error.raw_os_error() == Some(libc::ENOENT) => keys
            .get(partial.applied..)
            .unwrap_or_default()
            .iter()
            .try_for_each(|key| ignore_missing(remove(*key), map)),
        Err(partial) => Err(batch_err(map, partial)),
    }
}

impl LbMaps for AyaMaps {
    fn upsert_backend(&mut self, id: BackendId, backend: &Backend4) -> Result<(), Error> {
        let result = self
            .backends
            .insert(id.0, backend, 0)
            .map_err(|err| update_err(names::LB4_BACKENDS, "bpf-lb-map-max", err));
        self.bumped(result)
    }

    fn delete_backend(&mut self, id: BackendId) -> Result<(), Error> {
        let result = ignore_missing(self.backends.remove(&id.0), names::LB4_BACKENDS);
        self.bumped(result)
    }

    fn upsert_service(&mut self, key: &ServiceKey4, entry: &ServiceEntry) -> Result<(), Error> {
        self.flag_masters([key])?;
        self.services
            .insert(key, entry, 0)
            .map_err(|err| update_err(names::LB4_SERVICES, "bpf-lb-map-max", err))
    }

    fn delete_service(&mut self, key: &ServiceKey4) -> Result<(), Error> {
        let result = ignore_missing(self.services.remove(key), names::LB4_SERVICES);
        self.bumped(result)?;
        self.unflag_masters([key])
    }

    fn upsert_revnat(&mut self, id: ServiceId, revnat: &RevNat4) -> Result<(), Error> {
        self.revnat
            .insert(id.0, revnat, 0)
            .map_err(|err| update_err(names::LB4_REVNAT, "bpf-lb-map-max", err))
    }

    fn delete_revnat(&mut self, id: ServiceId) -> Result<(), Error> {
        ignore_missing(self.revnat.remove(&id.0), names::LB4_REVNAT)
    }

    fn upsert_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error> {
        self.source_ranges
            .insert(&source_range_key(range), 1, 0)
            .map_err(|err| update_err(names::LB4_SRC_RANGE, "bpf-lb-map-max", err))
    }

    fn delete_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error> {
        ignore_missing(
            self.source_ranges.remove(&source_range_key(range)),
            names::LB4_SRC_RANGE,
        )
    }

    fn upsert_backends(&mut self, entries: &[(BackendId, Backend4)]) -> Result<(), Error> {
        let (keys, values): (Vec<_>, Vec<_>) = entries.iter().map(|(id, b)| (id.0, *b)).unzip();
        let result = batch::update(&self.backends_fd, &keys, &values)
            .map_err(|partial| batch_err(names::LB4_BACKENDS, partial));
        self.bumped(result)
    }

    fn upsert_services(&mut self, entries: &[(ServiceKey4, ServiceEntry)]) -> Result<(), Error> {
        self.flag_masters(entries.iter().map(|(key, _)| key))?;
        let (keys, values): (Vec<_>, Vec<_>) = entries.iter().copied().unzip();
        batch::update(&self.services_fd, &keys, &values)
            .map_err(|partial| batch_err(names::LB4_SERVICES, partial))
    }

    fn upsert_revnats(&mut self, entries: &[(ServiceId, RevNat4)]) -> Result<(), Error> {
        let (keys, values): (Vec<_>, Vec<_>) = entries.iter().map(|(id, r)| (id.0, *r)).unzip();
        batch::update(&self.revnat_fd, &keys, &values)
            .map_err(|partial| batch_err(names::LB4_REVNAT, partial))
    }

    fn delete_services(&mut self, keys: &[ServiceKey4]) -> Result<(), Error> {
        let services = &mut self.services;
        let result = delete_batch(&self.services_fd, names::LB4_SERVICES, keys, |key| {
            services.remove(&key)
        });
        self.bumped(result)?;
        self.unflag_masters(keys)
    }

    fn delete_backends(&mut self, ids: &[BackendId]) -> Result<(), Error> {
        let keys: Vec<u32> = ids.iter().map(|id| id.0).collect();
        let backends = &mut self.backends;
        let result = delete_batch(&self.backends_fd, names::LB4_BACKENDS, &keys, |key| {
            backends.remove(&key)
        });
        self.bumped(result)
    }

    fn delete_revnats(&mut self, ids: &[ServiceId]) -> Result<(), Error> {
        let keys: Vec<u16> = ids.iter().map(|id| id.0).collect();
        let revnat = &mut self.revnat;
        delete_batch(&self.revnat_fd, names::LB4_REVNAT, &keys, |key| {
            revnat.remove(&key)
        })
    }

    fn write_maglev(
        &mut self,
        id: ServiceId,
        _spec: &MaglevSpec,
        table: &[BackendId],
        old_chunks: u16,
    ) -> Result<(), Error> {
        let (keys, values): (Vec<_>, Vec<_>) = maglev_chunks(id, table).into_iter().unzip();
        batch::update(&self.maglev_fd, &keys, &values).map_err(|partial| {
            if partial.error.raw_os_error() == Some(libc::E2BIG) {
                Error::MapFull {
                    map: names::LB4_MAGLEV,
                    flag: "bpf-lb-maglev-map-max-entries",
                }
            } else {
                batch_err(names::LB4_MAGLEV, partial)
            }
        })?;
        let stale: Vec<MaglevKey> = (keys.len() as u16..old_chunks)
            .map(|chunk| MaglevKey {
                rev_nat: id.0,
                chunk,
            })
            .collect();
        let maglev = &mut self.maglev;
        delete_batch(&self.maglev_fd, names::LB4_MAGLEV, &stale, |key| {
            maglev.remove(&key)
        })
    }

    fn delete_maglev(&mut self, id: ServiceId, chunks: u16) -> Result<(), Error> {
        let keys: Vec<MaglevKey> = (0..chunks)
            .map(|chunk| MaglevKey {
                rev_nat: id.0,
                chunk,
            })
            .collect();
        let maglev = &mut self.maglev;
        delete_batch(&self.maglev_fd, names::LB4_MAGLEV, &keys, |key| {
            maglev.remove(&key)
        })
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
            content.backends.insert(BackendId(key), value);
        }
        for item in self.revnat.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB4_REVNAT, err))?;
            content.revnat.insert(ServiceId(key), value);
        }
        for item in self.source_ranges.keys() {
            let key = item.map_err(|err| map_err("read", names::LB4_SRC_RANGE, err))?;
            if let Some(range) = source_range_of(&key) {
                content.source_ranges.insert(range);
            }
        }
        // Keys only: a table's values are rewritten by the next pass anyway.
        for key in self.maglev.keys() {
            let key = key.map_err(|err| map_err("read", names::LB4_MAGLEV, err))?;
            let chunks = key.chunk.saturating_add(1);
            let spec = content
                .maglev
                .entry(ServiceId(key.rev_nat))
                .or_insert_with(|| MaglevSpec::read_back(chunks));
            if spec.chunks() < chunks {
                *spec = MaglevSpec::read_back(chunks);
            }
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

/// The frontend a reverse-NAT entry restores, in host byte order.
pub fn revnat_addr_of(revnat: &RevNat4) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from_be(revnat.vip)),
        u16::from_be(revnat.port),
    )
}

/// A master entry (slot 0): the frontend's service id and how many slots it has, `count`
/// selectable ones then `qcount` draining ones, its `SERVICE_F_*` and `SERVICE_F2_*` flags; with an affinity timeout, ClientIP affinity
/// (`SERVICE_F_AFFINITY`, the timeout where a slot keeps its backend id).
pub fn master_entry(
    id: ServiceId,
    count: u16,
    qcount: u16,
    flags: u8,
    flags2: u8,
    affinity_timeout_secs: Option<u32>,
) -> ServiceEntry {
    match affinity_timeout_secs {
        Some(timeout) => ServiceEntry {
            backend_id: timeout,
            count,
            qcount,
            rev_nat: id.0,
            flags: flags | SERVICE_F_AFFINITY,
            flags2,
        },
        None => ServiceEntry {
            count,
            qcount,
            rev_nat: id.0,
            flags,
            flags2,
            ..ServiceEntry::default()
        },
    }
}

/// `entry` (a master entry) with new flows chosen from its Maglev table.
pub fn with_maglev(entry: ServiceEntry) -> ServiceEntry {
    ServiceEntry {
        flags2: entry.flags2 | SERVICE_F2_MAGLEV,
        ..entry
    }
}

/// A backend slot's entry: the backend it selects.
pub fn slot_entry(backend: BackendId) -> ServiceEntry {
    ServiceEntry {
        backend_id: backend.0,
        ..ServiceEntry::default()
    }
}

/// The service id a master entry names.
pub fn service_id_of(entry: &ServiceEntry) -> ServiceId {
    ServiceId(entry.rev_nat)
}

/// The backend id a slot's entry names.
pub fn backend_id_of(entry: &ServiceEntry) -> BackendId {
    BackendId(entry.backend_id)
}

/// The `LB4_SRC_RANGE` key of a source range (host byte order in, network out).
pub fn source_range_key(range: &SourceRangeEntry) -> LpmKey<SourceRangeKey4> {
    LpmKey::new(
        SOURCE_RANGE_PREFIX_BITS + u32::from(range.prefix_len),
        SourceRangeKey4 {
            rev_nat: range.service.0,
            _pad: 0,
            addr: u32::from(range.addr).to_be(),
        },
    )
}

/// The source range an `LB4_SRC_RANGE` key holds; `None` for a key no agent writes (shorter
/// than its service id, or longer than an address).
pub fn source_range_of(key: &LpmKey<SourceRangeKey4>) -> Option<SourceRangeEntry> {
    let prefix_len = key.prefix_len().checked_sub(SOURCE_RANGE_PREFIX_BITS)?;
    let data = key.data();
    Some(SourceRangeEntry {
        service: ServiceId(data.rev_nat),
        addr: Ipv4Addr::from(u32::from_be(data.addr)),
        prefix_len: u8::try_from(prefix_len).ok().filter(|len| *len <= 32)?,
    })
}

/// A node address for `DatapathConfig::node_addr` (network byte order).
pub fn node_addr_value(addr: Option<Ipv4Addr>) -> u32 {
    addr.map_or(0, |addr| u32::from(addr).to_be())
}
