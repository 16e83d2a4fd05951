//! Everything that touches aya: loading, attaching, the maps, events.
pub mod loader;
