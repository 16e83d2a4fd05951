//! Loads the embedded eBPF object with its maps pinned under `<bpf-root>/<PIN_VERSION>/`, so a
//! restarted agent finds the same maps (and the flows they carry) where the last one left them.
use std::{
    collections::BTreeMap,
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError},
    programs::SchedClassifier,
};
use lb_common::{
    config::DatapathConfig,
    conntrack::CT_REPLY,
    filter::{FilterWord, reply_slot, reply_slot6, word_and_flag},
    maps as names,
};

use super::{
    Error,
    conntrack::{CLOCK_PROGRAM, Clock, Conntrack},
    maps::AyaMaps,
    resize::{self, SizedMap},
};

/// The eBPF object built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// bpffs's magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The programs attached to interfaces, by their names in the object (the object also holds
/// `ct_clock`, which is only ever run by the agent, and the socket programs, which `sock.rs`
/// loads when they are wanted).
pub const PROGRAMS: [&str; 3] = ["from_netdev", "from_pod", "from_host"];

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The directory on bpffs that holds everything lb pins.
    pub bpf_root: PathBuf,
    /// Capacity of the TCP conntrack maps (`LB4_CT_TCP`, `LB6_CT_TCP`).
    pub ct_max_entries: u32,
    /// Capacity of the conntrack maps of other protocols (`LB4_CT_ANY`, `LB6_CT_ANY`).
    pub ct_any_max_entries: u32,
    /// Capacity of the services, backends and source-range maps of both families.
    pub lb_map_max: u32,
    /// The initial datapath configuration.
    pub config: DatapathConfig,
}

/// The loaded datapath: the object with its programs loaded (not yet attached) and its maps.
pub struct Datapath {
    /// The loaded object (programs; maps not taken by `maps`).
    pub ebpf: Ebpf,
    /// Typed handles on the maps.
    pub maps: AyaMaps,
    /// `<bpf-root>/<PIN_VERSION>`.
    pub pin_dir: PathBuf,
    /// The datapath's conntrack clock.
    pub clock: Clock,
    /// Maps whose capacity changed: finished once the programs are attached.
    pub resize: resize::Pending,
}

impl LoadOptions {
    /// The maps whose capacity an option sets: each option sizes an `LB4_*` map and its
    /// `LB6_*` twin alike.
    pub fn sized_maps(&self) -> [SizedMap; 12] {
        let sized = |map, max_entries, flag| SizedMap {
            map,
            max_entries,
            flag,
        };
        [
            sized(names::LB4_SERVICES, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB4_BACKENDS, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB4_REVNAT, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB4_SRC_RANGE, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB4_CT_TCP, self.ct_max_entries, "bpf-ct-max-entries"),
            sized(
                names::LB4_CT_ANY,
                self.ct_any_max_entries,
                "bpf-ct-global-any-max",
            ),
            sized(names::LB6_SERVICES, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB6_BACKENDS, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB6_REVNAT, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB6_SRC_RANGE, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB6_CT_TCP, self.ct_max_entries, "bpf-ct-max-entries"),
            sized(
                names::LB6_CT_ANY,
                self.ct_any_max_entries,
                "bpf-ct-global-any-max",
            ),
        ]
    }
}

impl Datapath {
    /// Loads the object, reusing maps pinned by a previous run (replacing those whose
    /// capacity changed, entries copied: see `resize`), and loads both programs.
    pub fn load(options: &LoadOptions) -> Result<Self, Error> {
        let pin_dir = prepare_pin_dir(&options.bpf_root)?;
        let sized = options.sized_maps();
        let resize = resize::prepare(&pin_dir, &sized)?;
        match Self::load_resized(options, &sized, pin_dir, resize) {
            Ok(datapath) => Ok(datapath),
            Err((err, resize)) => {
                resize.abort();
                Err(err)
            }
        }
    }

    fn load_resized(
        options: &LoadOptions,
        sized: &[SizedMap],
        pin_dir: PathBuf,
        resize: resize::Pending,
    ) -> Result<Self, (Error, resize::Pending)> {
        match Self::load_with(options, sized, &pin_dir, &resize) {
            Ok((ebpf, maps, clock)) => Ok(Self {
                ebpf,
                maps,
                pin_dir,
                clock,
                resize,
            }),
            Err(err) => Err((err, resize)),
        }
    }

    fn load_with(
        options: &LoadOptions,
        sized: &[SizedMap],
        pin_dir: &Path,
        resize: &resize::Pending,
    ) -> Result<(Ebpf, AyaMaps, Clock), Error> {
        // Pinned conntrack maps may come from a datapath that kept no reply filter (an
        // upgrade): the new filter then starts from their reply entries.
        let fresh_reply_filter = !pin_dir.join(names::LB4_REPLY_SRCS).exists();
        let fresh_reply_filter6 = !pin_dir.join(names::LB6_REPLY_SRCS).exists();
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        for map in sized {
            loader.map_max_entries(map.map, map.max_entries);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|err| Error::Load(Box::new(err)))?;
        // Before anything reads the maps (the syncer restores its ids from them).
        resize.copy()?;
        for name in PROGRAMS.into_iter().chain([CLOCK_PROGRAM]) {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|err| Error::Program {
                    action: "load",
                    program: name,
                    source: Box::new(err),
                })?;
        }
        if fresh_reply_filter {
            seed_reply_filter(&mut ebpf, pin_dir)?;
        }
        if fresh_reply_filter6 {
            seed_reply_filter6(&mut ebpf, pin_dir)?;
        }
        let clock = Clock::new(&mut ebpf, pin_dir)?;
        let mut maps = AyaMaps::take(&mut ebpf)?;
        use super::LbMaps as _;
        maps.set_config(&options.config)?;
        Ok((ebpf, maps, clock))
    }
}

/// The program `name` of the object, as the TC classifier both of lb's programs are.
pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, Error> {
    let find_error = |source| Error::Program {
        action: "find",
        program: name,
        source: Box::new(source),
    };
    ebpf.program_mut(name)
        .ok_or_else(|| find_error(aya::programs::ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(find_error)
}

/// Sets the reply filter's flag of every reply entry in conntrack (see `lb_common::filter`).
/// Only for a filter this load created: no program writes it yet (they are not attached), so
/// writing whole words loses no flag the datapath set.
fn seed_reply_filter(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<(), Error> {
    let slots = Conntrack::open(pin_dir)?
        .entries()?
        .into_iter()
        .filter(|item| item.entry.kind() == CT_REPLY)
        .map(|item| reply_slot(item.key.saddr, item.key.sport, item.key.proto));
    write_flags(ebpf, names::LB4_REPLY_SRCS, slots)
}

/// `seed_reply_filter` for IPv6: `LB6_REPLY_SRCS` from the IPv6 reply entries.
fn seed_reply_filter6(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<(), Error> {
    let slots = Conntrack::open(pin_dir)?
        .entries6()?
        .into_iter()
        .filter(|item| item.entry.kind() == CT_REPLY)
        .map(|item| reply_slot6(&item.key.saddr, item.key.sport, item.key.proto));
    write_flags(ebpf, names::LB6_REPLY_SRCS, slots)
}

/// Sets the flags of `slots` in the filter `name`, a whole word at a time.
fn write_flags(
    ebpf: &mut Ebpf,
    name: &'static str,
    slots: impl Iterator<Item = u32>,
) -> Result<(), Error> {
    let mut words: BTreeMap<u32, FilterWord> = BTreeMap::new();
    for slot in slots {
        let (word, flag) = word_and_flag(slot);
        words.entry(word).or_default()[flag] = 1;
    }
    if words.is_empty() {
        return Ok(());
    }
    let map_err = |action, err: MapError| Error::Map {
        action,
        map: name,
        source: Box::new(err),
    };
    let map = ebpf.map_mut(name).ok_or_else(|| Error::MapType {
        map: name,
        source: "not in the object".into(),
    })?;
    let mut filter: Array<&mut MapData, FilterWord> =
        Array::try_from(map).map_err(|err| map_err("open", err))?;
    for (word, value) in words {
        filter
            .set(word, value, 0)
            .map_err(|err| map_err("update", err))?;
    }
    Ok(())
}

/// Checks that `bpf_root`, or the nearest of its ancestors that exists, is on bpffs, so that
/// nothing is created on another filesystem.
pub fn check_bpffs(bpf_root: &Path) -> Result<(), Error> {
    let existing = bpf_root.ancestors().find(|dir| dir.exists());
    if existing.is_some_and(is_bpffs) {
        Ok(())
    } else {
        Err(Error::NotBpffs {
            path: bpf_root.display().to_string(),
        })
    }
}

/// Creates `<bpf-root>/<PIN_VERSION>` after checking that `bpf-root` is on bpffs.
fn prepare_pin_dir(bpf_root: &Path) -> Result<PathBuf, Error> {
    check_bpffs(bpf_root)?;
    std::fs::create_dir_all(bpf_root).map_err(|source| Error::PinDir {
        path: bpf_root.display().to_string(),
        source,
    })?;
    let pin_dir = bpf_root.join(names::PIN_VERSION);
    for dir in [pin_dir.clone(), pin_dir.join("links")] {
        std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    Ok(pin_dir)
}

/// Whether `path` lives on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    fs_magic(path) == Some(BPF_FS_MAGIC)
}

/// The magic number of the filesystem `path` lives on (`statfs.f_type`), if it can be read.
pub fn fs_magic(path: &Path) -> Option<i64> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of the
    // right size; statfs fills it completely on success.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    #[expect(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libc targets"
    )]
    let magic = stat.f_type as i64;
    Some(magic)
}
