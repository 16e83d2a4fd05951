//! Drop counters: packets and bytes per drop reason and hook, per CPU.
//!
//! Map: `LB_METRICS` (the only module that touches it). Called by `drop::settle` only.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    drop::{DropReason, Hook},
    metrics::{MetricKey, MetricValue},
};

use crate::maps::LB_METRICS;

/// Counts one dropped packet of `len` bytes under `reason` and `hook`.
#[inline(always)]
pub fn count_drop(len: u32, hook: Hook, reason: DropReason) {
    let key = MetricKey {
        reason: reason as u8,
        hook: hook as u8,
        _pad: [0; 2],
    };
    let bytes = u64::from(len);
    if let Some(value) = LB_METRICS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value, written only by this CPU, and BPF programs do not
        // preempt each other on one CPU.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += bytes;
        }
        return;
    }
    let first = MetricValue { packets: 1, bytes };
    // A failure means the map is full: the drop is still enforced, only not counted.
    let _ = LB_METRICS.insert(key, first, u64::from(BPF_NOEXIST));
}
