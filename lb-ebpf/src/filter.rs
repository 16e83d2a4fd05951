//! The pass-through filters (see `lb_common::filter`): whether a packet may be lb's business,
//! answered with two array lookups and no hashing before any conntrack or frontend lookup.
//!
//! Maps: `LB4_VIP_FILTER` (read; the agent writes it) and `LB4_REPLY_SRCS` (read, and written
//! here when conntrack inserts a reply entry), and their IPv6 pair `LB6_VIP_FILTER` and
//! `LB6_REPLY_SRCS` (the same, for `conntrack6.rs`). Never drops.

use aya_ebpf::maps::Array;
use lb_common::{
    Addr6,
    filter::{FilterWord, reply_slot, reply_slot6, vip_slot, vip_slot6, word_and_flag},
};

use crate::{
    maps::{LB4_REPLY_SRCS, LB4_VIP_FILTER, LB6_REPLY_SRCS, LB6_VIP_FILTER},
    parse::Tuple4,
    parse6::Tuple6,
};

/// Whether `slot`'s flag is set in `map`; a word that cannot be read counts as set (the
/// packet then takes the full path).
#[inline(always)]
fn is_set(map: &Array<FilterWord>, slot: u32) -> bool {
    let (word, flag) = word_and_flag(slot);
    map.get(word).is_none_or(|word| word[flag] != 0)
}

/// Whether the packet may be addressed to a frontend, or be a reply of a tracked flow. `false`
/// is certain: no VIP has its destination address, and no reply entry its source.
#[inline(always)]
pub fn maybe_lbs(tuple: &Tuple4) -> bool {
    is_set(&LB4_VIP_FILTER, vip_slot(tuple.daddr))
        || is_set(
            &LB4_REPLY_SRCS,
            reply_slot(tuple.saddr, tuple.sport, tuple.proto),
        )
}

/// [`maybe_lbs`] for an IPv6 packet.
#[inline(always)]
pub fn maybe_lbs6(tuple: &Tuple6) -> bool {
    is_set(&LB6_VIP_FILTER, vip_slot6(&tuple.daddr))
        || is_set(
            &LB6_REPLY_SRCS,
            reply_slot6(&tuple.saddr, tuple.sport, tuple.proto),
        )
}

/// Sets flag `slot` of `map`.
#[inline(always)]
fn set(map: &Array<FilterWord>, slot: u32) {
    let (word, flag) = word_and_flag(slot);
    if let Some(word) = map.get_ptr_mut(word) {
        // SAFETY: a valid map value pointer; `flag` < 8. A one-byte store of 1, which no
        // concurrent writer can undo (nobody writes 0).
        unsafe { (*word)[flag] = 1 };
    }
}

/// Sets the flag of replies from `addr:port` (network byte order) of `proto`: call before the
/// reply entry is inserted, so that no reply can arrive while its flag is still clear.
#[inline(always)]
pub fn mark_reply_source(addr: u32, port: u16, proto: u8) {
    set(&LB4_REPLY_SRCS, reply_slot(addr, port, proto));
}

/// [`mark_reply_source`] for an IPv6 reply entry's source.
#[inline(always)]
pub fn mark_reply_source6(addr: &Addr6, port: u16, proto: u8) {
    set(&LB6_REPLY_SRCS, reply_slot6(addr, port, proto));
}
