//! The load balancer's maps behind one trait, `LbMaps`, so that `sync/` can run against the
//! kernel (`AyaMaps`) or, in tests, in-memory maps (`fake::FakeMaps`).
//!
//! This is the only place that converts between host and network byte order, and between the
//! agent's typed ids (`ServiceId`, `BackendId`) and the raw integers of `lb-common`: the `*_key`,
//! `*_value` and `*_entry` functions build `lb-common` structs from plain addresses, ports and
//! ids, and `frontend_of` / `backend_addr_of` / `*_id_of` read them back.
//!
//! Both families go through one set of methods: a [`ServiceKey`], [`Backend`] or [`RevNat`]
//! is an IPv4 or IPv6 entry, and its family picks the map (`LB4_*` or `LB6_*`). Service ids
//! and backend ids are one space over both families; Maglev tables of both live in
//! `LB4_MAGLEV`.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
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
        Backend4, Backend6, MAGLEV_CHUNK, MaglevChunk, MaglevKey, RevNat4, RevNat6,
        SERVICE_F_AFFINITY, SERVICE_F2_MAGLEV, SOURCE_RANGE_PREFIX_BITS, ServiceEntry, ServiceKey4,
        ServiceKey6, SourceRangeKey4, SourceRangeKey6,
    },
};

use super::{
    Error, batch,
    vip_filter::{FrontendKey, VipFilter},
};
use crate::model::IpFamily;

/// A key of `LB4_SERVICES` or `LB6_SERVICES`, as the frontend's family decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    /// An `LB4_SERVICES` key.
    V4(ServiceKey4),
    /// An `LB6_SERVICES` key.
    V6(ServiceKey6),
}

impl ServiceKey {
    /// 0 for a master entry, 1.. for backend slots.
    pub const fn slot(&self) -> u16 {
        match self {
            Self::V4(key) => key.slot,
            Self::V6(key) => key.slot,
        }
    }

    /// The IP protocol; 0 for a VIP's wildcard entry.
    pub const fn proto(&self) -> u8 {
        match self {
            Self::V4(key) => key.proto,
            Self::V6(key) => key.proto,
        }
    }

    /// The same frontend's key of `slot`.
    pub const fn with_slot(&self, slot: u16) -> Self {
        match *self {
            Self::V4(key) => Self::V4(ServiceKey4 { slot, ..key }),
            Self::V6(key) => Self::V6(ServiceKey6 { slot, ..key }),
        }
    }

    /// The frontend's address family.
    pub const fn family(&self) -> IpFamily {
        match self {
            Self::V4(_) => IpFamily::V4,
            Self::V6(_) => IpFamily::V6,
        }
    }
}

impl From<ServiceKey4> for ServiceKey {
    fn from(key: ServiceKey4) -> Self {
        Self::V4(key)
    }
}

impl From<ServiceKey6> for ServiceKey {
    fn from(key: ServiceKey6) -> Self {
        Self::V6(key)
    }
}

impl From<Backend4> for Backend {
    fn from(backend: Backend4) -> Self {
        Self::V4(backend)
    }
}

impl From<Backend6> for Backend {
    fn from(backend: Backend6) -> Self {
        Self::V6(backend)
    }
}

/// A value of `LB4_BACKENDS` or `LB6_BACKENDS`, as the backend's family decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An `LB4_BACKENDS` value.
    V4(Backend4),
    /// An `LB6_BACKENDS` value.
    V6(Backend6),
}

impl Backend {
    /// The backend's address family.
    pub const fn family(&self) -> IpFamily {
        match self {
            Self::V4(_) => IpFamily::V4,
            Self::V6(_) => IpFamily::V6,
        }
    }

    /// `BACKEND_STATE_*`.
    pub const fn state(&self) -> u8 {
        match self {
            Self::V4(b) => b.state,
            Self::V6(b) => b.state,
        }
    }

    /// `BACKEND_F_*` bits.
    pub const fn flags(&self) -> u8 {
        match self {
            Self::V4(b) => b.flags,
            Self::V6(b) => b.flags,
        }
    }

    /// The IP protocol.
    pub const fn proto(&self) -> u8 {
        match self {
            Self::V4(b) => b.proto,
            Self::V6(b) => b.proto,
        }
    }
}

/// A value of `LB4_REVNAT` or `LB6_REVNAT`, as the frontend's family decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevNat {
    /// An `LB4_REVNAT` value.
    V4(RevNat4),
    /// An `LB6_REVNAT` value.
    V6(RevNat6),
}

impl RevNat {
    /// The frontend's address family.
    pub const fn family(&self) -> IpFamily {
        match self {
            Self::V4(_) => IpFamily::V4,
            Self::V6(_) => IpFamily::V6,
        }
    }
}

/// A service id: the key of a frontend's `LB4_REVNAT` entry, named by its master entry's
/// `rev_nat`. 0 is never allocated.
///
/// Defined here rather than in `sync::ids` (which allocates them) because `MapsContent` and the
/// `LbMaps` trait are keyed by it, and `datapath/` imports nothing from `sync/`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

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

/// One `LB4_SRC_RANGE` or `LB6_SRC_RANGE` entry (the address's family decides): a client
/// prefix a service id admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeEntry {
    /// The service id of the load-balancer frontend.
    pub service: ServiceId,
    /// The first address of the prefix.
    pub addr: IpAddr,
    /// The prefix length, 0-32 (IPv4) or 0-128 (IPv6).
    pub prefix_len: u8,
}

/// Everything `sync/` programs: the services, backends, reverse-NAT and source-range maps of
/// both families as plain data (each entry's family names its map).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapsContent {
    /// `LB4_SERVICES` and `LB6_SERVICES`.
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
    /// `LB4_BACKENDS` and `LB6_BACKENDS` (one id space: an id is in one of them).
    pub backends: BTreeMap<BackendId, Backend>,
    /// `LB4_REVNAT` and `LB6_REVNAT` (one id space).
    pub revnat: BTreeMap<ServiceId, RevNat>,
    /// `LB4_SRC_RANGE` and `LB6_SRC_RANGE`.
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
    pub fn chunks(&self) -> u32 {
        self.size.div_ceil(MAGLEV_CHUNK as u32)
    }

    /// What `read` knows of a table it finds in the map: only how many chunks it has (no
    /// members, so it never equals a desired spec, and the next pass rewrites it).
    pub fn read_back(chunks: u32) -> Self {
        Self {
            size: chunks * MAGLEV_CHUNK as u32,
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
                chunk: u32::try_from(i).unwrap_or(u32::MAX),
            };
            (key, chunk)
        })
        .collect()
}

/// Write access to the load balancer's maps. Every write is idempotent.
pub trait LbMaps {
    /// Inserts or replaces a backend.
    fn upsert_backend(&mut self, id: BackendId, backend: &Backend) -> Result<(), Error>;
    /// Removes a backend from its family's map; absent is fine.
    fn delete_backend(&mut self, id: BackendId, family: IpFamily) -> Result<(), Error>;
    /// Inserts or replaces a service slot (master or backend slot).
    fn upsert_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<(), Error>;
    /// Removes a service slot; absent is fine.
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error>;
    /// Inserts or replaces a reverse-NAT entry.
    fn upsert_revnat(&mut self, id: ServiceId, revnat: &RevNat) -> Result<(), Error>;
    /// Removes a reverse-NAT entry from its family's map; absent is fine.
    fn delete_revnat(&mut self, id: ServiceId, family: IpFamily) -> Result<(), Error>;
    /// Inserts a source range (idempotent).
    fn upsert_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error>;
    /// Removes a source range; absent is fine.
    fn delete_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error>;
    /// Inserts or replaces backends in order; after a failure a prefix is applied.
    fn upsert_backends(&mut self, entries: &[(BackendId, Backend)]) -> Result<(), Error> {
        entries
            .iter()
            .try_for_each(|(id, backend)| self.upsert_backend(*id, backend))
    }
    /// Inserts or replaces service slots in order; after a failure a prefix is applied.
    fn upsert_services(&mut self, entries: &[(ServiceKey, ServiceEntry)]) -> Result<(), Error> {
        entries
            .iter()
            .try_for_each(|(key, entry)| self.upsert_service(key, entry))
    }
    /// Inserts or replaces reverse-NAT entries in order; after a failure a prefix is applied.
    fn upsert_revnats(&mut self, entries: &[(ServiceId, RevNat)]) -> Result<(), Error> {
        entries
            .iter()
            .try_for_each(|(id, revnat)| self.upsert_revnat(*id, revnat))
    }
    /// Removes service slots in order; absent ones are fine.
    fn delete_services(&mut self, keys: &[ServiceKey]) -> Result<(), Error> {
        keys.iter().try_for_each(|key| self.delete_service(key))
    }
    /// Removes backends in order; absent ones are fine.
    fn delete_backends(&mut self, ids: &[(BackendId, IpFamily)]) -> Result<(), Error> {
        ids.iter()
            .try_for_each(|(id, family)| self.delete_backend(*id, *family))
    }
    /// Removes reverse-NAT entries in order; absent ones are fine.
    fn delete_revnats(&mut self, ids: &[(ServiceId, IpFamily)]) -> Result<(), Error> {
        ids.iter()
            .try_for_each(|(id, family)| self.delete_revnat(*id, *family))
    }
    /// Writes a frontend's Maglev table (M backend ids, built from `spec`), replacing each chunk
    /// whole, and removes chunks of an older, longer table up to `old_chunks`.
    fn write_maglev(
        &mut self,
        id: ServiceId,
        spec: &MaglevSpec,
        table: &[BackendId],
        old_chunks: u32,
    ) -> Result<(), Error>;
    /// Removes a frontend's Maglev table of `chunks` chunks; absent ones are fine.
    fn delete_maglev(&mut self, id: ServiceId, chunks: u32) -> Result<(), Error>;
    /// Replaces the datapath configuration.
    fn set_config(&mut self, config: &DatapathConfig) -> Result<(), Error>;
    /// Reads the services, backends, reverse-NAT, source-range and Maglev maps of both
    /// families.
    fn read(&self) -> Result<MapsContent, Error>;
    /// How many reverse-NAT entries each family's map holds: service ids above it are never
    /// handed out, so that live and retired ids always fit (the kernel's maps are sized by
    /// `bpf-lb-map-max`; a model without a limit has none).
    fn revnat_capacity(&self) -> u32 {
        u32::MAX
    }
}

/// The maps of one family's entries of a kind, with a duplicate descriptor for batch writes.
struct Family<K, V> {
    map: HashMap<MapData, K, V>,
    fd: OwnedFd,
}

/// The kernel's maps, taken out of the loaded object.
pub struct AyaMaps {
    services: HashMap<MapData, ServiceKey4, ServiceEntry>,
    // Keyed by the raw ids, which aya can copy in and out; the `LbMaps` methods convert.
    backends: HashMap<MapData, u32, Backend4>,
    revnat: HashMap<MapData, u32, RevNat4>,
    source_ranges: LpmTrie<MapData, SourceRangeKey4, u8>,
    services6: Family<ServiceKey6, ServiceEntry>,
    backends6: Family<u32, Backend6>,
    revnat6: Family<u32, RevNat6>,
    source_ranges6: LpmTrie<MapData, SourceRangeKey6, u8>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    config: Array<MapData, DatapathConfig>,
    metrics: PerCpuHashMap<MapData, MetricKey, MetricValue>,
    /// `LB4_VIP_FILTER`, kept in step with the master entries of `services`.
    vip_flags: VipFlags<ServiceKey4>,
    /// `LB6_VIP_FILTER`, kept in step with the master entries of `services6`.
    vip_flags6: VipFlags<ServiceKey6>,
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
    /// The smaller of the two reverse-NAT maps' capacities.
    revnat_capacity: u32,
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

/// Takes a hash map and a duplicate of its descriptor.
fn take_family<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<Family<K, V>, Error> {
    let (map, fd) = take_with_fd(ebpf, name)?;
    Ok(Family { map, fd })
}

/// The capacity of the map behind `fd`.
fn max_entries(fd: &OwnedFd, name: &'static str) -> Result<u32, Error> {
    let info = fd
        .try_clone()
        .map_err(MapError::from)
        .and_then(MapData::from_fd)
        .and_then(|map| map.info());
    match info {
        Ok(info) => Ok(info.max_entries()),
        Err(err) => Err(Error::MapType {
            map: name,
            source: Box::new(err),
        }),
    }
}

impl AyaMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let (services, services_fd) = take_with_fd(ebpf, names::LB4_SERVICES)?;
        let (backends, backends_fd) = take_with_fd(ebpf, names::LB4_BACKENDS)?;
        let (revnat, revnat_fd) = take_with_fd(ebpf, names::LB4_REVNAT)?;
        let (maglev, maglev_fd) = take_with_fd(ebpf, names::LB4_MAGLEV)?;
        let revnat6: Family<u32, RevNat6> = take_family(ebpf, names::LB6_REVNAT)?;
        let revnat_capacity = max_entries(&revnat_fd, names::LB4_REVNAT)?
            .min(max_entries(&revnat6.fd, names::LB6_REVNAT)?);
        let mut maps = Self {
            services,
            backends,
            revnat,
            source_ranges: take(ebpf, names::LB4_SRC_RANGE)?,
            services6: take_family(ebpf, names::LB6_SERVICES)?,
            backends6: take_family(ebpf, names::LB6_BACKENDS)?,
            revnat6,
            source_ranges6: take(ebpf, names::LB6_SRC_RANGE)?,
            maglev,
            maglev_fd,
            config: take(ebpf, names::LB_CONFIG)?,
            metrics: take(ebpf, names::LB_METRICS)?,
            vip_flags: VipFlags::take(ebpf, names::LB4_VIP_FILTER)?,
            vip_flags6: VipFlags::take(ebpf, names::LB6_VIP_FILTER)?,
            generation_map: take(ebpf, names::LB_GENERATION)?,
            generation: 0,
            services_fd,
            backends_fd,
            revnat_fd,
            revnat_capacity,
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
        maps.vip_flags.restore(&masters)?;
        let masters6: Vec<ServiceKey6> = maps
            .services6
            .map
            .keys()
            .filter(|key| key.as_ref().map_or(true, |key| key.slot == 0))
            .collect::<Result<_, _>>()
            .map_err(|err| map_err("read", names::LB6_SERVICES, err))?;
        maps.vip_flags6.restore(&masters6)?;
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

/// A family's VIP filter map and the counts that say what it must hold.
struct VipFlags<K: FrontendKey> {
    map: Array<MapData, FilterWord>,
    name: &'static str,
    counts: VipFilter<K>,
}

impl<K: FrontendKey> VipFlags<K> {
    fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Self, Error> {
        Ok(Self {
            map: take(ebpf, name)?,
            name,
            counts: VipFilter::default(),
        })
    }

    /// Counts the master entries already in the map (pinned by an earlier agent) and sets
    /// their flags (flags of a crashed agent's deleted frontends may linger: a flag set too
    /// long costs a packet the full path, nothing more).
    fn restore(&mut self, masters: &[K]) -> Result<(), Error> {
        for key in masters {
            self.counts.add(key);
        }
        self.counts
            .set_words()
            .into_iter()
            .try_for_each(|word| self.write_word(word))
    }

    /// Writes word `word` of the filter as the counts say.
    fn write_word(&mut self, word: u32) -> Result<(), Error> {
        self.map
            .set(word, self.counts.word(word), 0)
            .map_err(|err| map_err("update", self.name, err))
    }

    /// Counts master entries about to be written, setting their addresses' flags first.
    fn flag<'k>(&mut self, keys: impl IntoIterator<Item = &'k K>) -> Result<(), Error>
    where
        K: 'k,
    {
        let words: BTreeSet<u32> = keys
            .into_iter()
            .filter_map(|key| self.counts.add(key))
            .collect();
        words.into_iter().try_for_each(|word| self.write_word(word))
    }

    /// Forgets master entries just deleted, clearing the flags no address needs any more.
    fn unflag<'k>(&mut self, keys: impl IntoIterator<Item = &'k K>) -> Result<(), Error>
    where
        K: 'k,
    {
        let words: BTreeSet<u32> = keys
            .into_iter()
            .filter_map(|key| self.counts.remove(key))
            .collect();
        words.into_iter().try_for_each(|word| self.write_word(word))
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

/// The IPv4 and IPv6 entries of a batch, each in its order.
fn split<T: Copy, A, B>(entries: &[T], v4: impl Fn(T) -> Result<A, B>) -> (Vec<A>, Vec<B>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for entry in entries {
        match v4(*entry) {
            Ok(x) => a.push(x),
            Err(y) => b.push(y),
        }
    }
    (a, b)
}

impl AyaMaps {
    /// `upsert_backends`' writes, before the generation moves on.
    fn write_backends(&mut self, entries: &[(BackendId, Backend)]) -> Result<(), Error> {
        let (v4, v6) = split(entries, |(id, b)| match b {
            Backend::V4(b) => Ok((id.0, b)),
            Backend::V6(b) => Err((id.0, b)),
        });
        // IPv4 first: a failure in either says how many of that family's went in, which is
        // a prefix of the run only for the first; both are idempotent to retry.
        if !v4.is_empty() {
            let (keys, values): (Vec<_>, Vec<_>) = v4.into_iter().unzip();
            batch::update(&self.backends_fd, &keys, &values)
                .map_err(|partial| batch_err(names::LB4_BACKENDS, partial))?;
        }
        if !v6.is_empty() {
            let (keys, values): (Vec<_>, Vec<_>) = v6.into_iter().unzip();
            batch::update(&self.backends6.fd, &keys, &values)
                .map_err(|partial| batch_err(names::LB6_BACKENDS, partial))?;
        }
        Ok(())
    }

    /// `delete_services`' writes, before the generation moves on.
    fn remove_services(&mut self, keys: &[ServiceKey]) -> Result<(), Error> {
        let (v4, v6) = split(keys, |key| match key {
            ServiceKey::V4(key) => Ok(key),
            ServiceKey::V6(key) => Err(key),
        });
        if !v4.is_empty() {
            let services = &mut self.services;
            delete_batch(&self.services_fd, names::LB4_SERVICES, &v4, |key| {
                services.remove(&key)
            })?;
            self.vip_flags.unflag(&v4)?;
        }
        if !v6.is_empty() {
            let services = &mut self.services6.map;
            delete_batch(&self.services6.fd, names::LB6_SERVICES, &v6, |key| {
                services.remove(&key)
            })?;
            self.vip_flags6.unflag(&v6)?;
        }
        Ok(())
    }

    /// `delete_backends`' writes, before the generation moves on.
    fn remove_backends(&mut self, ids: &[(BackendId, IpFamily)]) -> Result<(), Error> {
        let (v4, v6) = split(ids, |(id, family)| match family {
            IpFamily::V4 => Ok(id.0),
            IpFamily::V6 => Err(id.0),
        });
        if !v4.is_empty() {
            let backends = &mut self.backends;
            delete_batch(&self.backends_fd, names::LB4_BACKENDS, &v4, |key| {
                backends.remove(&key)
            })?;
        }
        if !v6.is_empty() {
            let backends = &mut self.backends6.map;
            delete_batch(&self.backends6.fd, names::LB6_BACKENDS, &v6, |key| {
                backends.remove(&key)
            })?;
        }
        Ok(())
    }
}

impl LbMaps for AyaMaps {
    fn upsert_backend(&mut self, id: BackendId, backend: &Backend) -> Result<(), Error> {
        let result = match backend {
            Backend::V4(b) => self
                .backends
                .insert(id.0, b, 0)
                .map_err(|err| update_err(names::LB4_BACKENDS, "bpf-lb-map-max", err)),
            Backend::V6(b) => self
                .backends6
                .map
                .insert(id.0, b, 0)
                .map_err(|err| update_err(names::LB6_BACKENDS, "bpf-lb-map-max", err)),
        };
        self.bumped(result)
    }

    fn delete_backend(&mut self, id: BackendId, family: IpFamily) -> Result<(), Error> {
        let result = match family {
            IpFamily::V4 => ignore_missing(self.backends.remove(&id.0), names::LB4_BACKENDS),
            IpFamily::V6 => ignore_missing(self.backends6.map.remove(&id.0), names::LB6_BACKENDS),
        };
        self.bumped(result)
    }

    fn upsert_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<(), Error> {
        match key {
            ServiceKey::V4(key) => {
                self.vip_flags.flag([key])?;
                self.services
                    .insert(key, entry, 0)
                    .map_err(|err| update_err(names::LB4_SERVICES, "bpf-lb-map-max", err))
            }
            ServiceKey::V6(key) => {
                self.vip_flags6.flag([key])?;
                self.services6
                    .map
                    .insert(key, entry, 0)
                    .map_err(|err| update_err(names::LB6_SERVICES, "bpf-lb-map-max", err))
            }
        }
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error> {
        match key {
            ServiceKey::V4(key) => {
                let result = ignore_missing(self.services.remove(key), names::LB4_SERVICES);
                self.bumped(result)?;
                self.vip_flags.unflag([key])
            }
            ServiceKey::V6(key) => {
                let result = ignore_missing(self.services6.map.remove(key), names::LB6_SERVICES);
                self.bumped(result)?;
                self.vip_flags6.unflag([key])
            }
        }
    }

    fn upsert_revnat(&mut self, id: ServiceId, revnat: &RevNat) -> Result<(), Error> {
        match revnat {
            RevNat::V4(r) => self
                .revnat
                .insert(id.0, r, 0)
                .map_err(|err| update_err(names::LB4_REVNAT, "bpf-lb-map-max", err)),
            RevNat::V6(r) => self
                .revnat6
                .map
                .insert(id.0, r, 0)
                .map_err(|err| update_err(names::LB6_REVNAT, "bpf-lb-map-max", err)),
        }
    }

    fn delete_revnat(&mut self, id: ServiceId, family: IpFamily) -> Result<(), Error> {
        match family {
            IpFamily::V4 => ignore_missing(self.revnat.remove(&id.0), names::LB4_REVNAT),
            IpFamily::V6 => ignore_missing(self.revnat6.map.remove(&id.0), names::LB6_REVNAT),
        }
    }

    fn upsert_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error> {
        match source_range_key(range) {
            SourceRangeLpm::V4(key) => self
                .source_ranges
                .insert(&key, 1, 0)
                .map_err(|err| update_err(names::LB4_SRC_RANGE, "bpf-lb-map-max", err)),
            SourceRangeLpm::V6(key) => self
                .source_ranges6
                .insert(&key, 1, 0)
                .map_err(|err| update_err(names::LB6_SRC_RANGE, "bpf-lb-map-max", err)),
        }
    }

    fn delete_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error> {
        match source_range_key(range) {
            SourceRangeLpm::V4(key) => {
                ignore_missing(self.source_ranges.remove(&key), names::LB4_SRC_RANGE)
            }
            SourceRangeLpm::V6(key) => {
                ignore_missing(self.source_ranges6.remove(&key), names::LB6_SRC_RANGE)
            }
        }
    }

    fn upsert_backends(&mut self, entries: &[(BackendId, Backend)]) -> Result<(), Error> {
        let result = self.write_backends(entries);
        self.bumped(result)
    }

    fn upsert_services(&mut self, entries: &[(ServiceKey, ServiceEntry)]) -> Result<(), Error> {
        let (v4, v6) = split(entries, |(key, entry)| match key {
            ServiceKey::V4(key) => Ok((key, entry)),
            ServiceKey::V6(key) => Err((key, entry)),
        });
        if !v4.is_empty() {
            self.vip_flags.flag(v4.iter().map(|(key, _)| key))?;
            let (keys, values): (Vec<_>, Vec<_>) = v4.into_iter().unzip();
            batch::update(&self.services_fd, &keys, &values)
                .map_err(|partial| batch_err(names::LB4_SERVICES, partial))?;
        }
        if !v6.is_empty() {
            self.vip_flags6.flag(v6.iter().map(|(key, _)| key))?;
            let (keys, values): (Vec<_>, Vec<_>) = v6.into_iter().unzip();
            batch::update(&self.services6.fd, &keys, &values)
                .map_err(|partial| batch_err(names::LB6_SERVICES, partial))?;
        }
        Ok(())
    }

    fn upsert_revnats(&mut self, entries: &[(ServiceId, RevNat)]) -> Result<(), Error> {
        let (v4, v6) = split(entries, |(id, r)| match r {
            RevNat::V4(r) => Ok((id.0, r)),
            RevNat::V6(r) => Err((id.0, r)),
        });
        if !v4.is_empty() {
            let (keys, values): (Vec<_>, Vec<_>) = v4.into_iter().unzip();
            batch::update(&self.revnat_fd, &keys, &values)
                .map_err(|partial| batch_err(names::LB4_REVNAT, partial))?;
        }
        if !v6.is_empty() {
            let (keys, values): (Vec<_>, Vec<_>) = v6.into_iter().unzip();
            batch::update(&self.revnat6.fd, &keys, &values)
                .map_err(|partial| batch_err(names::LB6_REVNAT, partial))?;
        }
        Ok(())
    }

    fn delete_services(&mut self, keys: &[ServiceKey]) -> Result<(), Error> {
        let result = self.remove_services(keys);
        self.bumped(result)
    }

    fn delete_backends(&mut self, ids: &[(BackendId, IpFamily)]) -> Result<(), Error> {
        let result = self.remove_backends(ids);
        self.bumped(result)
    }

    fn delete_revnats(&mut self, ids: &[(ServiceId, IpFamily)]) -> Result<(), Error> {
        let (v4, v6) = split(ids, |(id, family)| match family {
            IpFamily::V4 => Ok(id.0),
            IpFamily::V6 => Err(id.0),
        });
        if !v4.is_empty() {
            let revnat = &mut self.revnat;
            delete_batch(&self.revnat_fd, names::LB4_REVNAT, &v4, |key| {
                revnat.remove(&key)
            })?;
        }
        if !v6.is_empty() {
            let revnat = &mut self.revnat6.map;
            delete_batch(&self.revnat6.fd, names::LB6_REVNAT, &v6, |key| {
                revnat.remove(&key)
            })?;
        }
        Ok(())
    }

    fn write_maglev(
        &mut self,
        id: ServiceId,
        _spec: &MaglevSpec,
        table: &[BackendId],
        old_chunks: u32,
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
        let stale: Vec<MaglevKey> = (keys.len() as u32..old_chunks)
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

    fn delete_maglev(&mut self, id: ServiceId, chunks: u32) -> Result<(), Error> {
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

    fn revnat_capacity(&self) -> u32 {
        self.revnat_capacity
    }

    fn read(&self) -> Result<MapsContent, Error> {
        let mut content = MapsContent::default();
        for item in self.services.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB4_SERVICES, err))?;
            content.services.insert(ServiceKey::V4(key), value);
        }
        for item in self.services6.map.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB6_SERVICES, err))?;
            content.services.insert(ServiceKey::V6(key), value);
        }
        // One id space: an id in both maps (a crash between reusing an id for the other
        // family and deleting its old entry) reads as the IPv6 one, and the next plan rewrites
        // the other if it is the one wanted.
        for item in self.backends.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB4_BACKENDS, err))?;
            content.backends.insert(BackendId(key), Backend::V4(value));
        }
        for item in self.backends6.map.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB6_BACKENDS, err))?;
            content.backends.insert(BackendId(key), Backend::V6(value));
        }
        for item in self.revnat.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB4_REVNAT, err))?;
            content.revnat.insert(ServiceId(key), RevNat::V4(value));
        }
        for item in self.revnat6.map.iter() {
            let (key, value) = item.map_err(|err| map_err("read", names::LB6_REVNAT, err))?;
            content.revnat.insert(ServiceId(key), RevNat::V6(value));
        }
        for item in self.source_ranges.keys() {
            let key = item.map_err(|err| map_err("read", names::LB4_SRC_RANGE, err))?;
            if let Some(range) = source_range_of(&key) {
                content.source_ranges.insert(range);
            }
        }
        for item in self.source_ranges6.keys() {
            let key = item.map_err(|err| map_err("read", names::LB6_SRC_RANGE, err))?;
            if let Some(range) = source_range6_of(&key) {
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
pub fn service_key(vip: IpAddr, port: u16, proto: u8, slot: u16) -> ServiceKey {
    match vip {
        IpAddr::V4(vip) => ServiceKey::V4(ServiceKey4::new(
            u32::from(vip).to_be(),
            port.to_be(),
            proto,
            slot,
        )),
        IpAddr::V6(vip) => ServiceKey::V6(ServiceKey6::new(
            lb_common::addr6_from_octets(vip.octets()),
            port.to_be(),
            proto,
            slot,
        )),
    }
}

/// The wildcard master entry's key that marks `vip` as a known VIP.
pub fn wildcard_key(vip: IpAddr) -> ServiceKey {
    service_key(vip, 0, 0, 0)
}

/// A backend value (host byte order in, network out).
pub fn backend_value(addr: IpAddr, port: u16, proto: u8, state: u8, flags: u8) -> Backend {
    match addr {
        IpAddr::V4(addr) => Backend::V4(Backend4 {
            addr: u32::from(addr).to_be(),
            port: port.to_be(),
            proto,
            state,
            flags,
            _pad: [0; 3],
        }),
        IpAddr::V6(addr) => Backend::V6(Backend6 {
            addr: lb_common::addr6_from_octets(addr.octets()),
            port: port.to_be(),
            proto,
            state,
            flags,
            _pad: [0; 3],
        }),
    }
}

/// A reverse-NAT value (host byte order in, network out).
pub fn revnat_value(vip: IpAddr, port: u16) -> RevNat {
    match vip {
        IpAddr::V4(vip) => RevNat::V4(RevNat4 {
            vip: u32::from(vip).to_be(),
            port: port.to_be(),
            _pad: 0,
        }),
        IpAddr::V6(vip) => RevNat::V6(RevNat6 {
            vip: lb_common::addr6_from_octets(vip.octets()),
            port: port.to_be(),
            _pad: 0,
        }),
    }
}

fn ip6(addr: lb_common::Addr6) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(lb_common::addr6_octets(addr)))
}

/// The frontend of a service key, in host byte order: (vip, port, proto).
pub fn frontend_of(key: &ServiceKey) -> (IpAddr, u16, u8) {
    match key {
        ServiceKey::V4(key) => (
            IpAddr::V4(Ipv4Addr::from(u32::from_be(key.vip))),
            u16::from_be(key.port),
            key.proto,
        ),
        ServiceKey::V6(key) => (ip6(key.vip), u16::from_be(key.port), key.proto),
    }
}

/// The address and port of a backend, in host byte order.
pub fn backend_addr_of(backend: &Backend) -> (IpAddr, u16) {
    match backend {
        Backend::V4(b) => (
            IpAddr::V4(Ipv4Addr::from(u32::from_be(b.addr))),
            u16::from_be(b.port),
        ),
        Backend::V6(b) => (ip6(b.addr), u16::from_be(b.port)),
    }
}

/// The frontend a reverse-NAT entry restores, in host byte order.
pub fn revnat_addr_of(revnat: &RevNat) -> (IpAddr, u16) {
    match revnat {
        RevNat::V4(r) => (
            IpAddr::V4(Ipv4Addr::from(u32::from_be(r.vip))),
            u16::from_be(r.port),
        ),
        RevNat::V6(r) => (ip6(r.vip), u16::from_be(r.port)),
    }
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
            _pad: 0,
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

/// The key of a source range in its family's map.
pub enum SourceRangeLpm {
    /// An `LB4_SRC_RANGE` key.
    V4(LpmKey<SourceRangeKey4>),
    /// An `LB6_SRC_RANGE` key.
    V6(LpmKey<SourceRangeKey6>),
}

/// The `LB4_SRC_RANGE` or `LB6_SRC_RANGE` key of a source range (host byte order in, network
/// out).
pub fn source_range_key(range: &SourceRangeEntry) -> SourceRangeLpm {
    let prefix_len = SOURCE_RANGE_PREFIX_BITS + u32::from(range.prefix_len);
    match range.addr {
        IpAddr::V4(addr) => SourceRangeLpm::V4(LpmKey::new(
            prefix_len,
            SourceRangeKey4 {
                rev_nat: range.service.0,
                addr: u32::from(addr).to_be(),
            },
        )),
        IpAddr::V6(addr) => SourceRangeLpm::V6(LpmKey::new(
            prefix_len,
            SourceRangeKey6 {
                rev_nat: range.service.0,
                addr: lb_common::addr6_from_octets(addr.octets()),
            },
        )),
    }
}

/// The source range an `LB4_SRC_RANGE` key holds; `None` for a key no agent writes (shorter
/// than its service id, or longer than an address).
pub fn source_range_of(key: &LpmKey<SourceRangeKey4>) -> Option<SourceRangeEntry> {
    let prefix_len = key.prefix_len().checked_sub(SOURCE_RANGE_PREFIX_BITS)?;
    let data = key.data();
    Some(SourceRangeEntry {
        service: ServiceId(data.rev_nat),
        addr: IpAddr::V4(Ipv4Addr::from(u32::from_be(data.addr))),
        prefix_len: u8::try_from(prefix_len).ok().filter(|len| *len <= 32)?,
    })
}

/// The source range an `LB6_SRC_RANGE` key holds; `None` for a key no agent writes.
pub fn source_range6_of(key: &LpmKey<SourceRangeKey6>) -> Option<SourceRangeEntry> {
    let prefix_len = key.prefix_len().checked_sub(SOURCE_RANGE_PREFIX_BITS)?;
    let data = key.data();
    Some(SourceRangeEntry {
        service: ServiceId(data.rev_nat),
        addr: ip6(data.addr),
        prefix_len: u8::try_from(prefix_len).ok().filter(|len| *len <= 128)?,
    })
}

/// A node address for `DatapathConfig::node_addr` (network byte order).
pub fn node_addr_value(addr: Option<Ipv4Addr>) -> u32 {
    addr.map_or(0, |addr| u32::from(addr).to_be())
}

/// A node address for `DatapathConfig::node_addr6` (wire order; all zero: none).
pub fn node_addr6_value(addr: Option<Ipv6Addr>) -> lb_common::Addr6 {
    addr.map_or([0; 4], |addr| lb_common::addr6_from_octets(addr.octets()))
}
