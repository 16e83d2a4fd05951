//! ClientIP session affinity: a client's new connections to a service go to the backend its
//! last new connection went to, while that is at most the service's timeout ago and the
//! backend is still there and active (k8s-semantics.md §2.8).
//!
//! Map: `LB4_AFFINITY` (LRU), keyed by (client address, service id). Only new flows look here:
//! established ones follow conntrack. Each new connection refreshes the entry, so the timeout
//! counts from the client's latest new connection, as kube-proxy's does.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use lb_common::service::{AffinityKey4, AffinityValue, SERVICE_F_AFFINITY, SERVICE_F2_MAGLEV};

use crate::{
    drop::Dropped,
    lb::{self, Chosen, Frontend},
    maglev,
    maps::LB4_AFFINITY,
    parse::Tuple4,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The backend for a new flow `tuple` to `frontend`: the remembered one when affinity is on
/// and it still holds, else one chosen by the frontend's algorithm (which is then remembered).
#[inline(always)]
pub fn select_backend(frontend: &Frontend, tuple: &Tuple4) -> Result<Chosen, Dropped> {
    if frontend.entry.flags & SERVICE_F_AFFINITY == 0 {
        return choose(frontend, tuple);
    }
    let key = AffinityKey4 {
        client: tuple.saddr,
        rev_nat: frontend.entry.rev_nat,
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(frontend.entry.backend_id) * NS_PER_SEC;
    // SAFETY: copied out at once.
    let remembered = unsafe { LB4_AFFINITY.get(key) }
        .copied()
        .filter(|seen| now.saturating_sub(seen.last_used_ns) <= timeout_ns)
        .and_then(|seen| {
            let backend = lb::lookup_backend(seen.backend_id)?;
            lb::is_active(&backend).then_some(Chosen {
                id: seen.backend_id,
                backend,
            })
        });
    let chosen = match remembered {
        Some(chosen) => chosen,
        None => choose(frontend, tuple)?,
    };
    let value = AffinityValue {
        last_used_ns: now,
        backend_id: chosen.id,
        _pad: 0,
    };
    // A full LRU map evicts its oldest client; a failed write only costs this client its
    // stickiness, never the connection.
    let _ = LB4_AFFINITY.insert(key, value, u64::from(BPF_ANY));
    Ok(chosen)
}

/// The frontend's algorithm: its Maglev table entry for the tuple, or a random active backend
/// (also when the table has no active backend for it).
#[inline(always)]
fn choose(frontend: &Frontend, tuple: &Tuple4) -> Result<Chosen, Dropped> {
    if frontend.entry.flags2 & SERVICE_F2_MAGLEV != 0
        && let Some(chosen) = maglev::select_backend(frontend, tuple)
    {
        return Ok(chosen);
    }
    lb::select_backend(frontend)
}
