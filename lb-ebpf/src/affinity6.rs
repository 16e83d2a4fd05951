//! ClientIP session affinity for IPv6 frontends: `affinity.rs` for `LB6_AFFINITY` (the only
//! module that touches it), keyed by (client address, service id). A client's new
//! connections go to the backend its last new connection went to, while that is at most the
//! service's timeout ago and the backend is still there and active; each new connection
//! refreshes the entry.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use lb_common::{
    config::DatapathConfig,
    service::{AffinityKey6, AffinityValue, SERVICE_F_AFFINITY},
};

use crate::{
    drop::Dropped,
    lb6::{self, Chosen6, Frontend6},
    maps::LB6_AFFINITY,
    parse6::Tuple6,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The backend for a new flow `tuple` to `frontend`: the remembered one when affinity is on
/// and it still holds, else the frontend's algorithm's (then remembered).
#[inline(always)]
pub fn select_backend(
    frontend: &Frontend6,
    tuple: &Tuple6,
    config: &DatapathConfig,
) -> Result<Chosen6, Dropped> {
    if frontend.entry.flags & SERVICE_F_AFFINITY == 0 {
        return lb6::select_backend(frontend, tuple, config);
    }
    let key = AffinityKey6 {
        client: tuple.saddr,
        rev_nat: frontend.entry.rev_nat,
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(frontend.entry.backend_id) * NS_PER_SEC;
    // SAFETY: copied out at once.
    let remembered = unsafe { LB6_AFFINITY.get(key) }
        .copied()
        .filter(|seen| now.saturating_sub(seen.last_used_ns) <= timeout_ns)
        .and_then(|seen| {
            let backend = lb6::lookup_backend(seen.backend_id)?;
            lb6::is_active(&backend).then_some(Chosen6 {
                id: seen.backend_id,
                backend,
            })
        });
    let chosen = match remembered {
        Some(chosen) => chosen,
        None => lb6::select_backend(frontend, tuple, config)?,
    };
    let value = AffinityValue {
        last_used_ns: now,
        backend_id: chosen.id,
        _pad: 0,
    };
    // A failed write only costs this client its stickiness.
    let _ = LB6_AFFINITY.insert(key, value, u64::from(BPF_ANY));
    Ok(chosen)
}
