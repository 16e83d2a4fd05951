//! Per-CPU counters of `LB_METRICS`, keyed by drop reason and hook.

/// Key of `LB_METRICS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MetricKey {
    /// The `DropReason` number.
    pub reason: u8,
    /// The `Hook`.
    pub hook: u8,
    /// Zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<MetricKey>() == 4);

/// Value of `LB_METRICS` (one per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MetricValue {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<MetricValue>() == 16);

crate::pod!(MetricKey, MetricValue);
