//! Everything that touches aya: loading and pinning (`loader`), attaching to interfaces
//! (`devices`) and to a cgroup (`sock`), conntrack's clock, GC and listing (`conntrack`), the typed maps behind the `LbMaps` trait (`maps`, with in-memory maps in `fake`
//! that only tests build), drop events and counters (`events`), and the maps rendered as text
//! (`dump`), and the agent's side of the pass-through filter (`vip_filter`).
//!
//! Nothing outside this module imports aya.
pub mod batch;
pub mod conntrack;
pub mod devices;
pub mod dump;
pub mod events;
#[cfg(test)]
pub mod fake;
pub mod loader;
pub mod maps;
pub mod resize;
pub mod sock;
pub mod vip_filter;

pub use loader::{Datapath, LoadOptions};
pub use maps::{BackendId, LbMaps, MapsContent, ServiceId, SourceRangeEntry};

/// Errors of the datapath module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bpf root is not on a bpffs mount.
    #[error(
        "--bpf-root `{path}` is not on a bpffs mount; mount one with `mount -t bpf bpf {path}` \
         (inside `ip netns exec`, /sys/fs/bpf is not bpffs: use `nsenter --net` instead)"
    )]
    NotBpffs {
        /// The offending path.
        path: String,
    },
    /// A filesystem operation on the pin directory failed.
    #[error("cannot prepare pin directory `{path}`")]
    PinDir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Loading the object failed.
    #[error("cannot load the lb eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program failed to load (the verifier said no) or attach.
    #[error("cannot {action} program `{program}`")]
    Program {
        /// load, attach, pin ...
        action: &'static str,
        /// The program's name.
        program: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A program could not be pinned or unpinned.
    #[error("cannot pin program `{program}` at `{path}`")]
    PinProgram {
        /// The program's name.
        program: &'static str,
        /// The pin.
        path: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An interface named on the command line does not exist.
    #[error("interface `{iface}` does not exist (check --devices)")]
    NoSuchInterface {
        /// The interface name.
        iface: String,
    },
    /// Attaching to an interface failed.
    #[error("cannot attach {hook} to `{iface}`")]
    Attach {
        /// from-netdev or from-pod.
        hook: &'static str,
        /// The interface.
        iface: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map is missing from the object or has the wrong type.
    #[error("map `{map}` is missing from the object or has an unexpected type")]
    MapType {
        /// The map's name.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map is full.
    #[error("map `{map}` is full; raise --{flag}")]
    MapFull {
        /// The map's name.
        map: &'static str,
        /// The option that sizes it.
        flag: &'static str,
    },
    /// A map would shrink below the entries it holds.
    #[error(
        "map `{map}` holds {entries} entries, more than --{flag} {max_entries}; start with a \
         larger --{flag} (nothing was changed)"
    )]
    ResizeTooSmall {
        /// The map's name.
        map: &'static str,
        /// Entries it holds.
        entries: usize,
        /// The capacity asked for.
        max_entries: u32,
        /// The option that sizes it.
        flag: &'static str,
    },
    /// A resize stopped half-way, and the start asks for yet another size.
    #[error(
        "map `{map}` is being resized to {size} entries (an earlier start stopped half-way); \
         start once with --{flag} {size} to finish it, then change the size"
    )]
    InterruptedResize {
        /// The map's name.
        map: &'static str,
        /// The option that sizes it.
        flag: &'static str,
        /// The size of the new map.
        size: u32,
    },
    /// Any other map operation failed.
    #[error("cannot {action} map `{map}`")]
    Map {
        /// update, delete, read.
        action: &'static str,
        /// The map's name.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A batch write failed after applying a prefix.
    #[error("batch write to map `{map}` failed after {applied} entries")]
    Batch {
        /// The map's name.
        map: &'static str,
        /// Entries applied before the failure.
        applied: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Socket-level load balancing could not be set up.
    #[error(transparent)]
    Sock(#[from] sock::Error),
    /// A fault injected by `fake::FakeMaps` (tests only).
    #[cfg(test)]
    #[error("injected failure on write {0}")]
    Injected(usize),
}
