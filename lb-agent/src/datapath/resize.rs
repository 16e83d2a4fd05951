//! Map sizes that options set (`--bpf-lb-map-max`, `--bpf-ct-max-entries`,
//! `--bpf-ct-global-any-max`), honoured across restarts although the maps are pinned.
//!
//! The loader reuses a pinned map whatever its size, so a size change is done here, around the
//! load: before it, every pin whose `max_entries` differs is moved aside to `resizing/<NAME>`
//! (after checking that its entries fit the new size: a shrink that would lose entries is
//! refused, and nothing has changed); the loader then creates the new map at the pin path and
//! the entries are copied into it (`Pending::copy`). The programs still attached use the old
//! maps until the agent swaps its own into the links, so `Pending::finish`, called once every
//! link carries the new programs, copies what the old programs wrote meanwhile (new conntrack
//! entries) and removes the old pins. Copies never overwrite (`BPF_NOEXIST`): an entry already
//! in the new map is newer.
//!
//! An agent that stops half-way leaves `resizing/<NAME>`: the next start resumes from it.
//! (A subdirectory rather than a suffix: bpffs refuses names with a dot.)
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapInfo};

use super::Error;

/// The directory, in the pin directory, of the pins moved aside during a resize.
pub const ASIDE_DIR: &str = "resizing";

/// A map whose capacity an option sets.
#[derive(Clone, Copy, Debug)]
pub struct SizedMap {
    /// The map's name (and pin name).
    pub map: &'static str,
    /// The capacity wanted.
    pub max_entries: u32,
    /// The option that sets it, for messages.
    pub flag: &'static str,
}

/// One map being resized.
#[derive(Debug)]
struct Move {
    map: &'static str,
    pin: PathBuf,
    aside: PathBuf,
    flag: &'static str,
    from: u32,
    to: u32,
    /// Whether this start moved the pin aside (rather than resuming an interrupted resize).
    moved_now: bool,
}

/// The resizes of one start: the old maps pinned aside, whose entries go to the new ones.
#[derive(Debug, Default)]
#[must_use = "a resize leaves the old maps pinned aside until `finish`"]
pub struct Pending {
    moves: Vec<Move>,
}

/// Checks every sized map pinned in `pin_dir` and moves aside those whose capacity changes.
/// Nothing changes unless every check passes.
pub fn prepare(pin_dir: &Path, maps: &[SizedMap]) -> Result<Pending, Error> {
    let mut moves = Vec::new();
    for sized in maps {
        let pin = pin_dir.join(sized.map);
        let aside = pin_dir.join(ASIDE_DIR).join(sized.map);
        let pinned_size = |path: &Path| {
            MapInfo::from_pin(path)
                .map(|info| info.max_entries())
                .map_err(|err| map_err("open", sized.map, err))
        };
        if aside.exists() {
            // An earlier start stopped half-way: the map aside is the old one.
            if pin.exists() && pinned_size(&pin)? != sized.max_entries {
                return Err(Error::InterruptedResize {
                    map: sized.map,
                    flag: sized.flag,
                    size: pinned_size(&pin)?,
                });
            }
            let from = pinned_size(&aside)?;
            check_fits(&aside, sized)?;
            moves.push(Move {
                map: sized.map,
                pin,
                aside,
                flag: sized.flag,
                from,
                to: sized.max_entries,
                moved_now: false,
            });
        } else if pin.exists() {
            let from = pinned_size(&pin)?;
            if from == sized.max_entries {
                continue;
            }
            check_fits(&pin, sized)?;
            moves.push(Move {
                map: sized.map,
                pin,
                aside,
                flag: sized.flag,
                from,
                to: sized.max_entries,
                moved_now: true,
            });
        }
    }
    let pending = Pending { moves };
    if pending.moves.iter().any(|step| step.moved_now) {
        let dir = pin_dir.join(ASIDE_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    for (done, step) in pending.moves.iter().enumerate() {
        if !step.moved_now {
            continue;
        }
        if let Err(source) = std::fs::rename(&step.pin, &step.aside) {
            // Put back what was moved, so a failed start changed nothing.
            for undo in pending.moves.iter().take(done).filter(|m| m.moved_now) {
                let _ = std::fs::rename(&undo.aside, &undo.pin);
            }
            remove_aside_dir(&pending.moves);
            return Err(Error::PinDir {
                path: step.aside.display().to_string(),
                source,
            });
        }
        tracing::info!(
            map = step.map,
            from = step.from,
            to = step.to,
            "map capacity changed; the pinned map is replaced and its entries copied"
        );
    }
    Ok(pending)
}

/// Refuses a new capacity below the entries the map holds.
fn check_fits(pin: &Path, sized: &SizedMap) -> Result<(), Error> {
    let entries = keys(&open(pin, sized.map)?, sized.map)?.len();
    if entries > sized.max_entries as usize {
        return Err(Error::ResizeTooSmall {
            map: sized.map,
            entries,
            max_entries: sized.max_entries,
            flag: sized.flag,
        });
    }
    Ok(())
}

impl Pending {
    /// Whether no map changes size.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// Copies the old maps' entries into the new maps (pinned by the loader by now).
    pub fn copy(&self) -> Result<(), Error> {
        for step in &self.moves {
            let copied = copy_entries(step)?;
            tracing::debug!(map = step.map, copied, "entries copied to the resized map");
        }
        Ok(())
    }

    /// Puts the old maps back where they were (the new ones, never used by an attached
    /// program, are unpinned): a start that fails before attaching changes nothing.
    pub fn abort(self) {
        for step in &self.moves {
            if step.moved_now {
                let _ = std::fs::remove_file(&step.pin);
                let _ = std::fs::rename(&step.aside, &step.pin);
            }
        }
        remove_aside_dir(&self.moves);
    }

    /// Once every link runs the new programs: copies what the old programs wrote since
    /// `copy`, and unpins the old maps (freed with their last program).
    pub fn finish(self) -> Result<(), Error> {
        for step in &self.moves {
            let copied = copy_entries(step)?;
            std::fs::remove_file(&step.aside).map_err(|source| Error::PinDir {
                path: step.aside.display().to_string(),
                source,
            })?;
            tracing::info!(
                map = step.map,
                from = step.from,
                to = step.to,
                copied,
                "map resized"
            );
        }
        remove_aside_dir(&self.moves);
        Ok(())
    }
}

/// Removes the directory of the moved-aside pins once it is empty.
fn remove_aside_dir(moves: &[Move]) {
    if let Some(dir) = moves.first().and_then(|step| step.aside.parent()) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Copies every entry of `step.aside` absent from `step.pin`; returns how many were written.
fn copy_entries(step: &Move) -> Result<usize, Error> {
    let old = open(&step.aside, step.map)?;
    let new = open(&step.pin, step.map)?;
    let value_size = old
        .info()
        .map_err(|err| map_err("read", step.map, err))?
        .value_size() as usize;
    let read = |source| io_err("read", step.map, source);
    let mut value = vec![0u8; value_size];
    let mut copied = 0;
    for key in keys(&old, step.map)? {
        // Gone since it was listed (an LRU eviction, the GC): nothing to copy.
        if !lookup(old.fd().as_fd(), &key, &mut value).map_err(read)? {
            continue;
        }
        match update(new.fd().as_fd(), &key, &value, BPF_NOEXIST) {
            Ok(()) => copied += 1,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) if err.raw_os_error() == Some(libc::E2BIG) => {
                return Err(Error::MapFull {
                    map: step.map,
                    flag: step.flag,
                });
            }
            Err(source) => return Err(io_err("update", step.map, source)),
        }
    }
    Ok(copied)
}

fn open(pin: &Path, map: &'static str) -> Result<MapData, Error> {
    MapData::from_pin(pin).map_err(|err| map_err("open", map, err))
}

fn map_err(action: &'static str, map: &'static str, err: aya::maps::MapError) -> Error {
    Error::Map {
        action,
        map,
        source: Box::new(err),
    }
}

fn io_err(action: &'static str, map: &'static str, source: io::Error) -> Error {
    Error::Map {
        action,
        map,
        source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf",
            io_error: source,
        })),
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_NOEXIST: u64 = 1;

/// The element-access member of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn call(cmd: libc::c_long, attr: &ElemAttr) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; its pointers reference
    // buffers of the map's key and value sizes that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every key of the map, as raw bytes of the map's key size, sorted, each once.
///
/// A hash map's walk restarts from its first key when the key it continues from was deleted
/// meanwhile, so the walk stops after as many keys as the map can hold and duplicates go.
fn keys(map: &MapData, name: &'static str) -> Result<Vec<Vec<u8>>, Error> {
    let info = map.info().map_err(|err| map_err("read", name, err))?;
    let mut keys = walk(
        map.fd().as_fd(),
        info.key_size() as usize,
        info.max_entries() as usize,
    )
    .map_err(|source| io_err("read", name, source))?;
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

fn walk(map: BorrowedFd<'_>, key_size: usize, limit: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    while out.len() < limit {
        let mut next = vec![0u8; key_size];
        let attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            // A null key asks for the first one.
            key: out.last().map_or(0, |key| key.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        match call(BPF_MAP_GET_NEXT_KEY, &attr) {
            Ok(()) => out.push(next),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

/// Reads `key` into `value`; false when absent.
fn lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match call(BPF_MAP_LOOKUP_ELEM, &attr) {
        Ok(()) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(err) => Err(err),
    }
}

fn update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
    };
    call(BPF_MAP_UPDATE_ELEM, &attr)
}
