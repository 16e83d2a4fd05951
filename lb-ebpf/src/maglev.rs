//! Maglev selection: a new flow to a frontend with `SERVICE_F2_MAGLEV` takes the backend in
//! entry `hash(5-tuple) % M` of the frontend's table, which the agent builds identically on
//! every node from the same backend set (Maglev consistent hashing). So a flow that an ECMP
//! router moves to another node still reaches the same backend, and removing one of N backends
//! moves about 1/N of the flows.
//!
//! Map: `LB4_MAGLEV`, the tables in chunks of `MAGLEV_CHUNK` backend ids keyed by (service id,
//! chunk): one hash lookup per new flow whatever M is, and a frontend's table is rewritten
//! without touching any other frontend's (see docs/datapath.md, "Maglev").

use lb_common::config::DatapathConfig;
use lb_common::service::{MAGLEV_CHUNK, MaglevKey, SERVICE_F_AFFINITY, maglev_hash};

use crate::{
    lb::{self, Chosen, Frontend},
    maps::{LB4_MAGLEV, config},
    parse::Tuple4,
};

const CHUNK_SHIFT: u32 = MAGLEV_CHUNK.trailing_zeros();
const CHUNK_MASK: u32 = MAGLEV_CHUNK as u32 - 1;
const _: () = assert!(MAGLEV_CHUNK.is_power_of_two());

/// The backend the frontend's Maglev table gives this flow, if the table has an active one
/// there. `None` (no table yet, a table being rewritten for a new M, a backend gone or
/// draining) lets the caller fall back to random selection rather than drop the flow.
#[inline(always)]
pub fn select_backend(frontend: &Frontend, tuple: &Tuple4) -> Option<Chosen> {
    let config = config();
    // With ClientIP affinity a client's connections share an entry (as in Cilium).
    let sport = if frontend.entry.flags & SERVICE_F_AFFINITY != 0 {
        0
    } else {
        tuple.sport
    };
    let hash = maglev_hash(
        tuple.saddr,
        tuple.daddr,
        sport,
        tuple.dport,
        config.maglev_seed,
    );
    lookup_id(frontend.entry.rev_nat, hash, config).and_then(|id| {
        let backend = lb::lookup_backend(id)?;
        lb::is_active(&backend).then_some(Chosen { id, backend })
    })
}

/// The backend id in entry `hash % M` of service `rev_nat`'s table, if the table is there:
/// address-independent, so that `lb6.rs` uses the same tables (ids are one space).
#[inline(always)]
pub fn lookup_id(rev_nat: u32, hash: u32, config: &DatapathConfig) -> Option<u32> {
    // checked_rem: M is 0 until the agent writes the configuration.
    let index = hash.checked_rem(config.maglev_table_size)?;
    let key = MaglevKey {
        rev_nat,
        chunk: index >> CHUNK_SHIFT,
    };
    // SAFETY: the one id is copied out at once; the agent replaces a value as a whole.
    let chunk = unsafe { LB4_MAGLEV.get(key) }?;
    chunk
        .backend_ids
        .get((index & CHUNK_MASK) as usize)
        .copied()
}
