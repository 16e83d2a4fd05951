//! Drop events from the datapath to every `lbctl monitor`: the agent's event reader
//! publishes each `DropEvent` here once, and each API client subscribes.
//!
//! Reading the ring buffer is `datapath/events.rs`'s job; decoding is `lb_api::proto`'s
//! (`DropEventRecord: From<&DropEvent>`), rendering `lbctl monitor`'s.

use lb_common::event::DropEvent;
use tokio::sync::broadcast;

use crate::api::proto::DropEventRecord;

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

    /// Sends one datapath event to every subscriber.
    pub fn publish(&self, event: &DropEvent) {
        self.publish_record(DropEventRecord::from(event));
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
