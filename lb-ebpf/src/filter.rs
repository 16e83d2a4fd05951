//! The pass-through filters (see `lb_common::filter`): whether a packet may be lb's business,
//! answered with two array lookups and no hashing before any conntrack or frontend lookup.
//!
//! Maps: `LB4_VIP_FILTER` (read; the agent writes it) and `LB4_REPLY_SRCS` (read, and written
//! here when conntrack inserts a reply entry). Never drops.

use aya_ebpf::maps::Array;
use lb_common::filter::{FilterWord, reply_slot, vip_slot, word_and_flag};

use crate::{
    maps::{LB4_REPLY_SRCS, LB4_VIP_FILTER},
    parse::Tuple4,
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

/// Sets the flag of replies from `addr:port` (network byte order) of `proto`: call before the
/// reply entry is inserted, so that no reply can arrive while its flag is still clear.
#[inline(always)]
pub fn mark_reply_source(addr: u32, port: u16, proto: u8) {
    let (word, flag) = word_and_flag(reply_slot(addr, port, proto));
    if let Some(word) = LB4_REPLY_SRCS.get_ptr_mut(word) {
        // SAFETY: a valid map value pointer; `flag` < 8. A one-byte store of 1, which no
        // concurrent writer can undo (nobody writes 0).
        unsafe { (*word)[flag] = 1 };
    }
}
