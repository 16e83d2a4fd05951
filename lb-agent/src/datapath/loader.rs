//! Loads the embedded eBPF object with its maps pinned under `<bpf-root>/<PIN_VERSION>/`, so a
//! restarted agent finds the same maps (and the flows they carry) where the last one left them.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};
use lb_common::{config::DatapathConfig, maps as names};

use super::{
    Error,
    conntrack::{CLOCK_PROGRAM, Clock},
    maps::AyaMaps,
    resize::{self, SizedMap},
};

/// The eBPF object built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// bpffs's magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The two programs attached to interfaces, by their names in the object (the object also
/// holds `ct_clock`, which is only ever run by the agent).
pub const PROGRAMS: [&str; 2] = ["from_netdev", "from_pod"];

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The directory on bpffs that holds everything lb pins.
    pub bpf_root: PathBuf,
    /// Capacity of the TCP conntrack map (`LB4_CT_TCP`).
    pub ct_max_entries: u32,
    /// Capacity of the conntrack map of other protocols (`LB4_CT_ANY`).
    pub ct_any_max_entries: u32,
    /// Capacity of the services and backends maps.
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
    /// The maps whose capacity an option sets.
    pub fn sized_maps(&self) -> [SizedMap; 4] {
        let sized = |map, max_entries, flag| SizedMap {
            map,
            max_entries,
            flag,
        };
        [
            sized(names::LB4_SERVICES, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB4_BACKENDS, self.lb_map_max, "bpf-lb-map-max"),
            sized(names::LB4_CT_TCP, self.ct_max_entries, "bpf-ct-max-entries"),
            sized(
                names::LB4_CT_ANY,
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
        let clock = Clock::new(&mut ebpf)?;
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
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of the
    // right size; statfs fills it completely on success.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    #[expect(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libc targets"
    )]
    let magic = stat.f_type as i64;
    magic == BPF_FS_MAGIC
}
