//! The pass-through filters: what lets the datapath tell, before any hash lookup, that a packet
//! is none of lb's business.
//!
//! Two sets of one-byte flags, each `FILTER_SLOTS` long and stored in an array map of
//! `FILTER_WORDS` words of 8 flags (an array lookup is a bounds check the verifier inlines, no
//! hashing):
//!
//! - `LB4_VIP_FILTER`, written by the agent only: the flag of every address that has a
//!   frontend ([`vip_slot`]). A packet whose destination's flag is clear is addressed to no
//!   VIP (nor to a VIP on an unknown port).
//! - `LB4_REPLY_SRCS`, written by the datapath only, when it inserts a conntrack reply
//!   entry: the flag of that entry's source, the backend's address, port and protocol
//!   ([`reply_slot`]). A packet whose source's flag is clear is no tracked flow's reply.
//!
//! A packet whose two flags are clear passes untouched. Flags are shared by every value that
//! hashes to their slot, so a set flag only means "maybe": the packet then takes the full path
//! (conntrack, frontend). The agent clears a VIP flag when its last address goes; reply flags
//! are never cleared (a flow may outlive its backend's service, and its replies must still be
//! found), so a stale one only costs the full path.
//!
//! IPv6 has a filter pair of its own, `LB6_VIP_FILTER` and `LB6_REPLY_SRCS`, with the same
//! meaning and writers; its slots hash the address's four words together first
//! ([`vip_slot6`], [`reply_slot6`]). Kept apart from IPv4's so that each family's flags are
//! counted (agent) and seeded (on a new filter, from that family's conntrack) on their own.
//!
//! The slots are part of the pinned maps' meaning: changing `FILTER_BITS` or a hash below
//! needs a new `PIN_VERSION`, or a restarted datapath would miss the flags of live flows.

/// log2 of the number of flags in each filter.
pub const FILTER_BITS: u32 = 20;
/// Flags in each filter.
pub const FILTER_SLOTS: u32 = 1 << FILTER_BITS;
/// Flags per word (array element).
pub const FLAGS_PER_WORD: u32 = 8;
/// Words (array elements) of each filter.
pub const FILTER_WORDS: u32 = FILTER_SLOTS / FLAGS_PER_WORD;

/// One array element: 8 flags, each 0 (clear) or 1 (set). Bytes rather than bits, so that
/// setting a flag is a plain one-byte store that cannot undo another CPU's.
pub type FilterWord = [u8; FLAGS_PER_WORD as usize];

/// Fibonacci hashing of `x` to a slot.
#[inline(always)]
const fn slot_of(x: u32) -> u32 {
    x.wrapping_mul(0x9e37_79b1) >> (32 - FILTER_BITS)
}

/// The VIP filter's slot of `addr` (network byte order, as in the packet).
#[inline(always)]
pub const fn vip_slot(addr: u32) -> u32 {
    slot_of(addr)
}

/// The reply filter's slot of packets from `addr:port` (network byte order) of `proto`.
#[inline(always)]
pub const fn reply_slot(addr: u32, port: u16, proto: u8) -> u32 {
    slot_of(addr.wrapping_mul(0x85eb_ca6b) ^ (port as u32) ^ ((proto as u32) << 16))
}

/// The four words of an IPv6 address (`lb_common::Addr6`, wire order) folded into one: every
/// bit of the address reaches the result, so neighbouring addresses differ in it.
#[inline(always)]
const fn fold6(addr: &crate::Addr6) -> u32 {
    let mut folded = addr[0];
    folded = folded.wrapping_mul(0x85eb_ca6b) ^ addr[1];
    folded = folded.wrapping_mul(0x85eb_ca6b) ^ addr[2];
    folded.wrapping_mul(0x85eb_ca6b) ^ addr[3]
}

/// The IPv6 VIP filter's slot of `addr`.
#[inline(always)]
pub const fn vip_slot6(addr: &crate::Addr6) -> u32 {
    slot_of(fold6(addr))
}

/// The IPv6 reply filter's slot of packets from `addr`, `port` (network byte order) of `proto`.
#[inline(always)]
pub const fn reply_slot6(addr: &crate::Addr6, port: u16, proto: u8) -> u32 {
    reply_slot(fold6(addr), port, proto)
}

/// The word (array index) and the flag within it of `slot`.
#[inline(always)]
pub const fn word_and_flag(slot: u32) -> (u32, usize) {
    (slot / FLAGS_PER_WORD, (slot % FLAGS_PER_WORD) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_in_range_and_spread_neighbouring_addresses() {
        let mut seen = [false; 1024];
        for i in 0..1024u32 {
            // 10.244.x.y in network byte order, as the packet carries it.
            let addr = u32::from_be_bytes([10, 244, (i >> 8) as u8, i as u8]).to_be();
            let slot = vip_slot(addr);
            assert!(slot < FILTER_SLOTS);
            assert!(reply_slot(addr, 8080u16.to_be(), 6) < FILTER_SLOTS);
            seen[(slot >> (FILTER_BITS - 10)) as usize] = true;
        }
        let buckets = seen.iter().filter(|s| **s).count();
        assert!(
            buckets > 500,
            "1024 neighbours fill {buckets} of 1024 buckets"
        );
    }

    #[test]
    fn ipv6_slots_stay_in_range_and_spread_neighbouring_addresses() {
        let mut seen = [false; 1024];
        for i in 0..1024u32 {
            // fd00:10:244::x:y, as the packet carries it.
            let mut octets = [0u8; 16];
            octets[..6].copy_from_slice(&[0xfd, 0, 0, 0x10, 0x02, 0x44]);
            octets[14] = (i >> 8) as u8;
            octets[15] = i as u8;
            let addr = crate::addr6_from_octets(octets);
            let slot = vip_slot6(&addr);
            assert!(slot < FILTER_SLOTS);
            assert!(reply_slot6(&addr, 8080u16.to_be(), 6) < FILTER_SLOTS);
            seen[(slot >> (FILTER_BITS - 10)) as usize] = true;
        }
        let buckets = seen.iter().filter(|s| **s).count();
        assert!(
            buckets > 500,
            "1024 neighbours fill {buckets} of 1024 buckets"
        );
    }

    #[test]
    fn a_slot_is_a_word_and_a_flag_within_it() {
        assert_eq!(word_and_flag(0), (0, 0));
        assert_eq!(word_and_flag(13), (1, 5));
        assert_eq!(
            word_and_flag(FILTER_SLOTS - 1),
            (FILTER_WORDS - 1, (FLAGS_PER_WORD - 1) as usize)
        );
    }
}
