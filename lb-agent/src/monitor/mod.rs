//! Drop events from the datapath to every `lbctl monitor`: the agent's event reader
//! publishes each event (an IPv4 `DropEvent` or an IPv6 `DropEvent6`) here once, and each API
//! client subscribes.
//!
//! Reading and telling the kinds apart is `datapath/events.rs`'s job; turning either into
//! addresses and host-order ports is `lb_api::proto`'s (`DropEventRecord: From<&DropEvent>`
//! and `From<&DropEvent6>`), rendering `lbctl monitor`'s.

use tokio::sync::broadcast;

use crate::api::proto::DropEventRecord;
use crate::datapath::events::Event;

impl From<&Event> for DropEventRecord {
    fn from(event: &Event) -> Self {
        match event {
            Event::Drop(drop) => Self::from(drop),
            Event::Drop6(drop) => Self::from(drop),
        }
    }
}

/// How many events a slow subscriber may fall behind before it loses some.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Fans drop events out to any number of subscribers; publishing never blocks, and with no
/// subscriber an event is simply discarded.
#[derive(Clone, Debug)]
pub struct DropFanout {
    tx: broadcast::Sender<DropEventRecord>,
}

impl Default for DropFanout {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl DropFanout {
    /// A fan-out keeping up to `capacity` events per lagging subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// Sends one datapath event (an `&Event`, `&DropEvent` or `&DropEvent6`) to every
    /// subscriber.
    pub fn publish(&self, event: impl Into<DropEventRecord>) {
        self.publish_record(event.into());
    }

    /// Sends one decoded event to every subscriber.
    pub fn publish_record(&self, record: DropEventRecord) {
        // An error only means nobody is listening.
        let _ = self.tx.send(record);
    }

    /// A new subscription, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DropEventRecord> {
        self.tx.subscribe()
    }

    /// Current number of subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use lb_common::event::{DropEvent, DropEvent6, EVENT_DROP, EVENT_DROP6};

    use super::*;

    #[test]
    fn subscribers_get_both_families_with_their_addresses() {
        let fanout = DropFanout::new(4);
        let mut rx = fanout.subscribe();
        let v4 = DropEvent {
            kind: EVENT_DROP,
            reason: 174,
            saddr: u32::from_ne_bytes([192, 168, 56, 10]),
            dport: 80u16.to_be(),
            ..DropEvent::default()
        };
        let ip6: std::net::Ipv6Addr = "fd00:56::10".parse().expect("ipv6");
        let v6 = DropEvent6 {
            kind: EVENT_DROP6,
            reason: 174,
            saddr: lb_common::addr6_from_octets(ip6.octets()),
            dport: 80u16.to_be(),
            ..DropEvent6::default()
        };
        fanout.publish(&Event::Drop(v4));
        fanout.publish(&Event::Drop6(v6));
        let first = rx.try_recv().expect("the IPv4 drop");
        let second = rx.try_recv().expect("the IPv6 drop");
        assert_eq!(
            (first.saddr, first.dport),
            (IpAddr::from([192, 168, 56, 10]), 80)
        );
        assert_eq!((second.saddr, second.dport), (IpAddr::from(ip6), 80));
        assert!(rx.try_recv().is_err(), "two events, two records");
    }
}
