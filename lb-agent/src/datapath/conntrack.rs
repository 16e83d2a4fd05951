//! The conntrack maps from the agent's side: the datapath's clock, the GC that deletes
//! expired entries, and the entries of both families that `lbctl bpf ct list` lists (as rows
//! made in `api::rows`).
//!
//! The datapath writes `LB4_CT_TCP` and `LB4_CT_ANY` (and their IPv6 twins `LB6_CT_TCP`,
//! `LB6_CT_ANY`, whose entries carry the same header: one GC reads both); the agent only reads
//! them and deletes
//! what has expired (an expired entry is already ignored by the datapath, so deleting it
//! changes no packet's fate, and an entry refreshed between the read and the delete is
//! re-created by its flow's next packet). Expiries count in the datapath's clock, which only
//! the datapath can read (`bpf_jiffies64`): the agent asks it through the `ct_clock` program.
//!
//! The GC leaves the reply filter (`LB4_REPLY_SRCS`, `lb_common::filter`) alone, even when it
//! deletes the last reply entry from a source, because no flag can be proven unused:
//!
//! - a flag is a hashed slot shared by every source (address, port, protocol) that hashes to
//!   it, and a clear flag is a promise that *no* reply entry has such a source;
//! - the datapath sets the flag and then inserts the entry, under no lock the agent could
//!   take: a flag cleared after the agent's scan but around a new flow's insert leaves that
//!   flow's replies passing untranslated (a local backend's SYN-ACK follows within
//!   microseconds), and a re-scan to repair it comes milliseconds too late;
//! - an array update writes a whole word of 8 flags, which undoes any flag of that word the
//!   datapath set between the agent's read and write.
//!
//! A stale flag only costs packets from that source the full path (one conntrack lookup).
//! Flags accumulate with the distinct backend address, port and protocol triples a node has
//! served, not with flows. Emptying the filter safely would take two filters, the datapath
//! setting flags in both and the agent clearing the idle one before the two swap roles.
use std::{collections::HashSet, path::Path};

use aya::{
    Ebpf, TestRun as _, TestRunOptions,
    maps::{HashMap, Map, MapData},
    programs::SchedClassifier,
};
use lb_common::{
    conntrack::{CT_REPLY, CT_SERVICE, CtEntry, CtEntry6, CtKey4, CtKey6},
    maps as names,
};

use super::{Error, loader::classifier};

/// The name of the clock program in the object.
pub const CLOCK_PROGRAM: &str = "ct_clock";
/// The pin, in the version directory, that exists only while [`Clock::new`] opens a handle.
const CLOCK_HANDLE_PIN: &str = "ct_clock_handle";

/// Which conntrack map of a family an entry is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtMap {
    /// `LB4_CT_TCP` (`LB6_CT_TCP` for IPv6).
    Tcp,
    /// `LB4_CT_ANY` (`LB6_CT_ANY` for IPv6).
    Any,
}

impl CtMap {
    /// Both maps.
    pub const ALL: [Self; 2] = [Self::Tcp, Self::Any];

    /// The map's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => names::LB4_CT_TCP,
            Self::Any => names::LB4_CT_ANY,
        }
    }

    /// The map's label in metrics and `lbctl`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Any => "any",
        }
    }

    /// The IPv6 map's name.
    pub const fn name6(self) -> &'static str {
        match self {
            Self::Tcp => names::LB6_CT_TCP,
            Self::Any => names::LB6_CT_ANY,
        }
    }

    /// The IPv6 map's label in `lbctl`.
    pub const fn label6(self) -> &'static str {
        match self {
            Self::Tcp => "tcp6",
            Self::Any => "any6",
        }
    }
}

/// `CONFIG_HZ` of the running kernel: the coarse clocks tick once a jiffy, so their resolution
/// is `1 s / HZ`.
pub fn kernel_hz() -> Option<u32> {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid, writable timespec.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    if rc != 0 || res.tv_sec != 0 || res.tv_nsec <= 0 {
        return None;
    }
    let nanos = u64::try_from(res.tv_nsec).ok()?;
    u32::try_from((1_000_000_000 + nanos / 2) / nanos).ok()
}

/// `DatapathConfig::clock_mult` for a kernel ticking `hz` times a second: `2^32 / hz`
/// rounded up (so that a whole number of seconds in jiffies never reads one less), and
/// `jiffies * mult >> 32` counts seconds.
pub const fn clock_mult(hz: u32) -> u32 {
    if hz == 0 {
        return 0;
    }
    (1u64 << 32).div_ceil(hz as u64) as u32
}

/// The datapath's conntrack clock, read through the `ct_clock` program.
pub struct Clock {
    program: SchedClassifier,
}

impl Clock {
    /// An independent handle on the loaded `ct_clock` program of `ebpf`, whose pins are in
    /// `pin_dir`.
    ///
    /// The handle is opened through a pin made for the moment and removed at once: opening a
    /// program by its id (`BPF_PROG_GET_FD_BY_ID`) needs CAP_SYS_ADMIN, which the agent runs
    /// without (deploy/daemonset.yaml), while opening a pin needs only the file. A pin left by
    /// an agent killed in between is replaced here and removed with the rest by `--uninstall`.
    pub fn new(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Self, Error> {
        let pin = pin_dir.join(CLOCK_HANDLE_PIN);
        let pin_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::PinProgram {
            program: CLOCK_PROGRAM,
            path: pin.display().to_string(),
            source,
        };
        match std::fs::remove_file(&pin) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(pin_error(Box::new(err)));
            }
            _ => {}
        }
        let loaded = classifier(ebpf, CLOCK_PROGRAM)?;
        loaded.pin(&pin).map_err(|err| pin_error(Box::new(err)))?;
        let opened = SchedClassifier::from_pin(&pin);
        loaded.unpin().map_err(|err| pin_error(Box::new(err)))?;
        let program = opened.map_err(|err| Error::Program {
            action: "open",
            program: CLOCK_PROGRAM,
            source: Box::new(err),
        })?;
        Ok(Self { program })
    }

    /// The datapath's now, in seconds of its clock (what entries' `expires` count in).
    pub fn now(&self) -> Result<u32, Error> {
        // The smallest packet a TC program accepts: an Ethernet header.
        let frame = [0u8; 14];
        let mut out = [0u8; 14];
        let result = self
            .program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .map_err(|err| Error::Program {
                action: "run",
                program: CLOCK_PROGRAM,
                source: Box::new(err),
            })?;
        Ok(result.return_value)
    }
}

/// One conntrack entry, as read: an IPv4 one by default, [`CtItem6`] for IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtItem<K = CtKey4, E = CtEntry> {
    /// The map it is in (of its family: `LB4_CT_TCP`, or `LB6_CT_TCP` for IPv6, ...).
    pub map: CtMap,
    /// Its key.
    pub key: K,
    /// Its value.
    pub entry: E,
}

/// One IPv6 conntrack entry, as read.
pub type CtItem6 = CtItem<CtKey6, CtEntry6>;

/// What one GC pass did and saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Expired entries deleted.
    pub deleted: u64,
    /// Live entries left in `LB4_CT_TCP` and `LB6_CT_TCP`.
    pub entries_tcp: u64,
    /// Live entries left in `LB4_CT_ANY` and `LB6_CT_ANY`.
    pub entries_any: u64,
    /// Service ids (`rev_nat`) that live entries still name: their rev-NAT entries and ids
    /// must outlive them.
    pub referenced_services: HashSet<u32>,
    /// Backend ids that live entries still name.
    pub referenced_backends: HashSet<u32>,
}

impl GcReport {
    /// Deletes, through `remove`, an entry of `map` (either family) that has expired at `now`
    /// or that lb did not write (`expires`, `kind`); otherwise counts it live and records the
    /// service and backend `ids` it names.
    fn sweep(
        &mut self,
        now: u32,
        map: CtMap,
        (expires, kind): (u32, u8),
        (rev_nat, backend_id): (u32, u32),
        remove: impl FnOnce() -> Result<(), (&'static str, aya::maps::MapError)>,
    ) -> Result<(), Error> {
        if expires <= now || (kind != CT_SERVICE && kind != CT_REPLY) {
            return match remove() {
                Ok(()) => {
                    self.deleted += 1;
                    Ok(())
                }
                // Evicted or deleted by the datapath meanwhile: gone either way.
                Err((_, aya::maps::MapError::KeyNotFound)) => Ok(()),
                Err((name, err)) => Err(Error::Map {
                    action: "delete",
                    map: name,
                    source: Box::new(err),
                }),
            };
        }
        match map {
            CtMap::Tcp => self.entries_tcp += 1,
            CtMap::Any => self.entries_any += 1,
        }
        self.referenced_services.insert(rev_nat);
        self.referenced_backends.insert(backend_id);
        Ok(())
    }
}

/// The conntrack maps of both families, opened by their pins (independent of the loaded
/// object's handles).
pub struct Conntrack {
    v4: FamilyMaps<CtKey4, CtEntry>,
    v6: FamilyMaps<CtKey6, CtEntry6>,
}

/// One family's two conntrack maps.
struct FamilyMaps<K, E> {
    tcp: HashMap<MapData, K, E>,
    any: HashMap<MapData, K, E>,
    /// The family's name of each map ([`CtMap::name`] or [`CtMap::name6`]).
    name: fn(CtMap) -> &'static str,
}

impl<K: aya::Pod, E: aya::Pod> FamilyMaps<K, E> {
    /// Opens the maps named by `name` pinned in `pin_dir`.
    fn open(pin_dir: &Path, name: fn(CtMap) -> &'static str) -> Result<Self, Error> {
        Ok(Self {
            tcp: open_pinned(pin_dir, name(CtMap::Tcp))?,
            any: open_pinned(pin_dir, name(CtMap::Any))?,
            name,
        })
    }

    fn map(&self, map: CtMap) -> &HashMap<MapData, K, E> {
        match map {
            CtMap::Tcp => &self.tcp,
            CtMap::Any => &self.any,
        }
    }

    /// Every entry of both maps, expired ones included.
    fn entries(&self) -> Result<Vec<CtItem<K, E>>, Error> {
        let mut items = Vec::new();
        for map in CtMap::ALL {
            for item in self.map(map).iter() {
                let (key, entry) = item.map_err(|err| Error::Map {
                    action: "read",
                    map: (self.name)(map),
                    source: Box::new(err),
                })?;
                items.push(CtItem { map, key, entry });
            }
        }
        Ok(items)
    }

    /// The GC pass over both maps at `now` into `report`; `header` reads an entry's
    /// `(expires, kind)` and `(rev_nat, backend_id)`.
    fn gc(
        &mut self,
        now: u32,
        report: &mut GcReport,
        header: impl Fn(&E) -> ((u32, u8), (u32, u32)),
    ) -> Result<(), Error> {
        let name = self.name;
        for item in self.entries()? {
            let map = match item.map {
                CtMap::Tcp => &mut self.tcp,
                CtMap::Any => &mut self.any,
            };
            let (state, ids) = header(&item.entry);
            report.sweep(now, item.map, state, ids, || {
                map.remove(&item.key).map_err(|err| (name(item.map), err))
            })?;
        }
        Ok(())
    }
}

/// Opens the conntrack map `name` pinned in `pin_dir`.
fn open_pinned<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, Error> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(|err| Error::Map {
        action: "open",
        map: name,
        source: Box::new(err),
    })?;
    HashMap::try_from(Map::LruHashMap(data)).map_err(|err| Error::MapType {
        map: name,
        source: Box::new(err),
    })
}

impl Conntrack {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        Ok(Self {
            v4: FamilyMaps::open(pin_dir, CtMap::name)?,
            v6: FamilyMaps::open(pin_dir, CtMap::name6)?,
        })
    }

    /// Every entry of both IPv4 maps, expired ones included.
    pub fn entries(&self) -> Result<Vec<CtItem>, Error> {
        self.v4.entries()
    }

    /// Every entry of both IPv6 maps, expired ones included.
    pub fn entries6(&self) -> Result<Vec<CtItem6>, Error> {
        self.v6.entries()
    }

    /// One GC pass at `now` (the datapath's clock): deletes every entry that has expired (or
    /// that lb did not write), counts the rest and collects the ids they name, in both
    /// families' maps.
    pub fn gc(&mut self, now: u32) -> Result<GcReport, Error> {
        let mut report = GcReport::default();
        self.v4.gc(now, &mut report, |entry| {
            let service = entry.service();
            (
                (entry.expires(), entry.kind()),
                (service.rev_nat, service.backend_id),
            )
        })?;
        // The header is at the IPv4 entry's offsets (lb-common asserts it): ids are one
        // space, so the same sets.
        self.v6.gc(now, &mut report, |entry| {
            let service = entry.service();
            (
                (entry.expires(), entry.kind()),
                (service.rev_nat, service.backend_id),
            )
        })?;
        Ok(report)
    }
}

/// Runs a GC pass every `interval` until `shutdown`, handing each pass's report to `report`.
/// A failed pass is logged and retried at the next tick: the datapath ignores expired
/// entries anyway, so a late GC only costs map space.
pub async fn run_gc(
    clock: Clock,
    pin_dir: std::path::PathBuf,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
    report: impl Fn(&GcReport, std::time::Instant) + Send + 'static,
) {
    let mut conntrack: Option<Conntrack> = None;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // Taken before the scan: an id retired after it may be named by an entry the scan
        // passed before it was written (see `sync::Referenced::scan_started`).
        let scan_started = tokio::time::Instant::now().into_std();
        let pass = (|| {
            let maps = match conntrack.as_mut() {
                Some(maps) => maps,
                None => conntrack.insert(Conntrack::open(&pin_dir)?),
            };
            let now = clock.now()?;
            maps.gc(now)
        })();
        match pass {
            Ok(done) => {
                tracing::debug!(
                    deleted = done.deleted,
                    tcp = done.entries_tcp,
                    any = done.entries_any,
                    "conntrack GC pass"
                );
                report(&done, scan_started);
            }
            Err(err) => {
                tracing::warn!(error = %crate::telemetry::error_chain(&err), "conntrack GC pass failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_seconds_at_common_tick_rates() {
        for hz in [100u32, 250, 300, 1000] {
            let mult = u64::from(clock_mult(hz));
            let jiffies = u64::from(hz) * 86_400;
            assert_eq!((jiffies * mult) >> 32, 86_400, "HZ={hz}");
        }
        assert_eq!(clock_mult(0), 0);
    }

    #[test]
    fn this_kernel_has_a_tick_rate() {
        let hz = kernel_hz().expect("CLOCK_MONOTONIC_COARSE has a resolution");
        assert!((24..=10_000).contains(&hz), "HZ={hz}");
    }
}
