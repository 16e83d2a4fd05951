//! The agent's side of `LB4_VIP_FILTER` and `LB6_VIP_FILTER` (see `lb_common::filter`): the
//! flag of every address that has a frontend, kept in step with the master entries `AyaMaps`
//! writes. One `VipFilter` per family: `VipFilter<ServiceKey4>`, `VipFilter<ServiceKey6>`.
//!
//! `VipFilter` counts master entries (slot 0 keys, wildcards included) per address and
//! addresses per flag, and says which words of the filter changed. A flag is set *before* the
//! first master entry of its address is written and cleared only *after* the last one is
//! deleted, so the datapath never sees a frontend whose flag is clear. A write that fails
//! leaves its keys counted: a flag set too long only sends packets down the full path.
use std::{
    collections::{BTreeSet, HashMap},
    hash::Hash,
};

use lb_common::{
    Addr6,
    filter::{FLAGS_PER_WORD, FilterWord, vip_slot, vip_slot6, word_and_flag},
    service::{ServiceKey4, ServiceKey6},
};

/// A frontend key of one family, as the filter sees it.
pub trait FrontendKey: Copy + Ord {
    /// The address type of the family.
    type Addr: Copy + Eq + Hash;
    /// The frontend's address.
    fn vip(&self) -> Self::Addr;
    /// Whether this is a master entry (slot 0).
    fn is_master(&self) -> bool;
    /// The filter slot of `addr`.
    fn slot_of(addr: &Self::Addr) -> u32;
}

impl FrontendKey for ServiceKey4 {
    type Addr = u32;
    fn vip(&self) -> u32 {
        self.vip
    }
    fn is_master(&self) -> bool {
        self.slot == 0
    }
    fn slot_of(addr: &u32) -> u32 {
        vip_slot(*addr)
    }
}

impl FrontendKey for ServiceKey6 {
    type Addr = Addr6;
    fn vip(&self) -> Addr6 {
        self.vip
    }
    fn is_master(&self) -> bool {
        self.slot == 0
    }
    fn slot_of(addr: &Addr6) -> u32 {
        vip_slot6(addr)
    }
}

/// Master entries by address, and addresses by flag.
#[derive(Debug)]
pub struct VipFilter<K: FrontendKey> {
    masters: BTreeSet<K>,
    per_addr: HashMap<K::Addr, u32>,
    per_slot: HashMap<u32, u32>,
}

impl<K: FrontendKey> Default for VipFilter<K> {
    fn default() -> Self {
        Self {
            masters: BTreeSet::new(),
            per_addr: HashMap::new(),
            per_slot: HashMap::new(),
        }
    }
}

impl<K: FrontendKey> VipFilter<K> {
    /// Counts `key` if it is a master entry not counted yet. Returns the word whose flag was
    /// set, if one was.
    pub fn add(&mut self, key: &K) -> Option<u32> {
        if !key.is_master() || !self.masters.insert(*key) {
            return None;
        }
        let addrs = self.per_addr.entry(key.vip()).or_default();
        *addrs += 1;
        if *addrs > 1 {
            return None;
        }
        let slot = K::slot_of(&key.vip());
        let count = self.per_slot.entry(slot).or_default();
        *count += 1;
        (*count == 1).then_some(word_and_flag(slot).0)
    }

    /// Forgets the master entry `key` (deleted). Returns the word whose flag was cleared, if
    /// one was.
    pub fn remove(&mut self, key: &K) -> Option<u32> {
        if !key.is_master() || !self.masters.remove(key) {
            return None;
        }
        let addrs = self.per_addr.get_mut(&key.vip())?;
        *addrs -= 1;
        if *addrs > 0 {
            return None;
        }
        self.per_addr.remove(&key.vip());
        let slot = K::slot_of(&key.vip());
        let count = self.per_slot.get_mut(&slot)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.per_slot.remove(&slot);
        Some(word_and_flag(slot).0)
    }

    /// The value word `word` of the filter must hold.
    pub fn word(&self, word: u32) -> FilterWord {
        let mut out = FilterWord::default();
        for (flag, value) in out.iter_mut().enumerate() {
            let slot = word * FLAGS_PER_WORD + flag as u32;
            *value = u8::from(self.per_slot.contains_key(&slot));
        }
        out
    }

    /// Every word with a flag set.
    pub fn set_words(&self) -> BTreeSet<u32> {
        self.per_slot
            .keys()
            .map(|slot| word_and_flag(*slot).0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn service_key(vip: Ipv4Addr, port: u16, proto: u8, slot: u16) -> ServiceKey4 {
        ServiceKey4::new(u32::from(vip).to_be(), port.to_be(), proto, slot)
    }

    fn wildcard_key(vip: Ipv4Addr) -> ServiceKey4 {
        service_key(vip, 0, 0, 0)
    }

    fn flag_of(filter: &VipFilter<ServiceKey4>, vip: Ipv4Addr) -> u8 {
        let (word, flag) = word_and_flag(vip_slot(u32::from(vip).to_be()));
        filter.word(word)[flag]
    }

    #[test]
    fn an_address_is_flagged_from_its_first_master_entry_until_its_last_goes() {
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let mut filter = VipFilter::<ServiceKey4>::default();
        let http = service_key(vip, 80, 6, 0);
        let dns = service_key(vip, 53, 17, 0);
        assert!(filter.add(&http).is_some(), "the first entry sets the flag");
        assert_eq!(filter.add(&http), None, "counted once");
        assert_eq!(filter.add(&dns), None);
        assert_eq!(filter.add(&wildcard_key(vip)), None);
        assert_eq!(
            filter.add(&service_key(vip, 80, 6, 1)),
            None,
            "a slot is no master"
        );
        assert_eq!(flag_of(&filter, vip), 1);
        assert_eq!(filter.remove(&http), None);
        assert_eq!(filter.remove(&service_key(vip, 80, 6, 1)), None);
        assert_eq!(filter.remove(&dns), None);
        assert_eq!(flag_of(&filter, vip), 1, "the wildcard still holds it");
        assert!(filter.remove(&wildcard_key(vip)).is_some());
        assert_eq!(flag_of(&filter, vip), 0);
        assert!(filter.set_words().is_empty());
        assert_eq!(filter.remove(&wildcard_key(vip)), None, "absent is fine");
    }

    #[test]
    fn addresses_sharing_a_flag_clear_it_only_when_both_are_gone() {
        // Find two addresses whose flags share a slot.
        let mut by_slot = HashMap::new();
        let (a, b) = (0..u32::MAX)
            .map(|i| Ipv4Addr::from(0x0a60_0000 + i))
            .find_map(|vip| {
                by_slot
                    .insert(vip_slot(u32::from(vip).to_be()), vip)
                    .map(|other| (other, vip))
            })
            .expect("the pigeonhole principle");
        let mut filter = VipFilter::<ServiceKey4>::default();
        assert!(filter.add(&wildcard_key(a)).is_some());
        assert_eq!(filter.add(&wildcard_key(b)), None, "already set");
        assert_eq!(filter.remove(&wildcard_key(a)), None, "b still needs it");
        assert_eq!(flag_of(&filter, b), 1);
        assert!(filter.remove(&wildcard_key(b)).is_some());
    }

    #[test]
    fn an_ipv6_address_is_flagged_from_its_first_master_entry_until_its_last_goes() {
        let vip = lb_common::addr6_from_octets(
            "fd00:96::10"
                .parse::<std::net::Ipv6Addr>()
                .expect("an address")
                .octets(),
        );
        let (word, flag) = word_and_flag(vip_slot6(&vip));
        let mut filter = VipFilter::<ServiceKey6>::default();
        let http = ServiceKey6::new(vip, 80u16.to_be(), 6, 0);
        let dns = ServiceKey6::new(vip, 53u16.to_be(), 17, 0);
        assert_eq!(
            filter.add(&http),
            Some(word),
            "the first entry sets the flag"
        );
        assert_eq!(filter.add(&dns), None);
        assert_eq!(
            filter.add(&ServiceKey6::new(vip, 80u16.to_be(), 6, 1)),
            None,
            "a slot is no master"
        );
        assert_eq!(filter.word(word)[flag], 1);
        assert_eq!(filter.remove(&http), None, "dns still holds it");
        assert_eq!(filter.word(word)[flag], 1);
        assert_eq!(filter.remove(&dns), Some(word));
        assert_eq!(filter.word(word)[flag], 0);
    }
}
