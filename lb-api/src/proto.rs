//! The wire protocol between `lbctl` and lb-agent: newline-delimited JSON over the unix
//! socket. A client writes one [`Request`] per line; the agent answers each with one
//! [`Response`] line, except [`Request::MonitorDrops`], which it answers with a stream of
//! [`Response::Drop`] (and [`Response::Lost`]) lines until the client disconnects.
//!
//! These types carry values ready to print, for both address families: addresses as `IpAddr`
//! (JSON strings) or as text written by [`crate::addr`] (`10.96.0.10:53/UDP`,
//! `[fd00::1]:80/TCP`), ports in host order.

use std::net::IpAddr;

use lb_common::{
    conntrack::{
        CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_FROM_NETDEV, CT_F_SEEN_REPLY, CT_F_SNAT, CT_REPLY,
        CT_SERVICE, CtEntry, CtEntry6, CtKey4, CtKey6,
    },
    event::{DropEvent, DropEvent6},
};
use serde::{Deserialize, Serialize};

use crate::addr::{AddrField, socket_text};

/// One request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Is the agent ready, and a summary.
    Status,
    /// Every service with its backends.
    ServiceList,
    /// Every option and its current value.
    ConfigView,
    /// Change a live option.
    ConfigSet {
        /// The option's key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Stream drop events until the client disconnects.
    MonitorDrops,
    /// Every conntrack entry of both maps.
    CtList,
    /// `lbctl bpf lb list`: every entry of the services map.
    LbList,
}

/// One response line from the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Box<StatusReply>),
    /// Answer to [`Request::ServiceList`].
    ServiceList {
        /// Services, sorted by id.
        services: Vec<ServiceRow>,
    },
    /// Answer to [`Request::ConfigView`].
    ConfigView {
        /// `(key, value)` sorted by key (kept for clients that predate `entries`).
        options: Vec<(String, String)>,
        /// Every option with where its value comes from, sorted by key.
        #[serde(default)]
        entries: Vec<ConfigEntry>,
    },
    /// Answer to [`Request::ConfigSet`]: the change took effect on this node.
    ConfigSet {
        /// The option's key.
        key: String,
        /// Its value now.
        value: String,
        /// What was done, for the operator: applied live, persisted where (or not).
        #[serde(default)]
        outcome: String,
    },
    /// Answer to [`Request::LbList`].
    LbList {
        /// Entries, by frontend then slot.
        entries: Vec<LbRow>,
    },
    /// Answer to [`Request::CtList`].
    CtList {
        /// Entries, sorted by map, protocol and tuple.
        entries: Vec<CtRow>,
    },
    /// One drop event of a [`Request::MonitorDrops`] stream.
    Drop(DropEventRecord),
    /// Events the stream skipped because the client read too slowly.
    Lost {
        /// How many.
        count: u64,
    },
    /// The request failed; `message` is for the operator.
    Error {
        /// Lowercase, names the object, suggests the fix.
        message: String,
    },
}

/// One option as `lbctl config view` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// The key.
    pub key: String,
    /// The value in effect.
    pub value: String,
    /// Where it comes from: `flag`, `env LB_…`, `config-dir`, `default`, or `config set (not
    /// persisted)`.
    pub source: String,
    /// What the config directory (the ConfigMap) says, when a flag or environment variable
    /// overrides a different value there.
    #[serde(default)]
    pub overridden_config_dir_value: Option<String>,
}

/// The agent's state, for `lbctl status` and `/healthz`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The agent's version.
    pub version: String,
    /// `source` as configured (`kube` or `file:DIR`).
    pub source: String,
    /// This node's name.
    pub node_name: String,
    /// The eBPF programs are loaded and attached.
    pub datapath_loaded: bool,
    /// The first full sync of the maps has completed.
    pub synced: bool,
    /// Services programmed.
    pub services: u64,
    /// Backends programmed.
    pub backends: u64,
    /// Interfaces with from-netdev attached.
    pub devices: Vec<String>,
    /// Interfaces with from-pod attached.
    pub pod_devices: Vec<String>,
    /// The last sync error, if the last sync failed.
    pub last_sync_error: Option<String>,
    /// Why the running datapath is not healthy (a pin or link gone, the event reader dead);
    /// `None` when it is. Liveness fails while this is set.
    #[serde(default)]
    pub datapath_error: Option<String>,
    /// Frontends the last sync could not program because a map was full
    /// (`namespace/name:port (vip:port/proto)`); they keep what they had.
    #[serde(default)]
    pub not_programmed: Vec<String>,
    /// The source's connectivity: `connected`, `readable`, `connecting` or `failing for Ns: …`.
    #[serde(default)]
    pub source_state: String,
    /// Seconds since the last successful sync; `None` before the first.
    #[serde(default)]
    pub last_sync_age_seconds: Option<f64>,
    /// Files and objects the source skipped as malformed since start.
    #[serde(default)]
    pub malformed_objects: u64,
    /// Fill levels of the maps.
    #[serde(default)]
    pub maps: Vec<MapFill>,
    /// The programs attached, one per interface and hook.
    #[serde(default)]
    pub programs: Vec<AttachedProgram>,
}

/// One entry of a services map (`LB4_SERVICES` or `LB6_SERVICES`), for `lbctl bpf lb list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbRow {
    /// `vip:port/PROTO` (`[fd00::1]:80/TCP` for IPv6), or the bare VIP for a VIP's wildcard
    /// entry.
    pub frontend: String,
    /// 0 for the master entry, 1.. for the backend slots.
    pub slot: u16,
    /// The frontend's service id (the rev-NAT entry); 0 for a wildcard entry.
    pub rev_nat: u32,
    /// The slot's backend as `addr:port/PROTO`; `0.0.0.0:0` (`[::]:0` in `LB6_SERVICES`) for a
    /// master entry.
    pub backend: String,
    /// The slot's backend id; 0 for a master entry.
    pub backend_id: u32,
    /// A master entry's kind and flags (`ClusterIP`, `Local` ...).
    pub flags: Vec<String>,
}

/// How full one map is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    /// The map's name (`LB4_SERVICES`).
    pub name: String,
    /// Entries it holds (conntrack: at the last GC pass).
    pub entries: u64,
    /// Its capacity.
    pub max_entries: u64,
}

/// One program attached to an interface (a pinned link).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedProgram {
    /// The interface.
    pub iface: String,
    /// `from-netdev` or `from-pod`.
    pub hook: String,
}

impl StatusReply {
    /// Alive: the datapath is loaded and nothing of it has gone (`/healthz`, the liveness
    /// probe). Independent of the source: a pinned datapath serves traffic while the API
    /// server is unreachable.
    pub fn not_live_reason(&self) -> Option<String> {
        if !self.datapath_loaded {
            Some("datapath not loaded".to_owned())
        } else {
            self.datapath_error.clone()
        }
    }

    /// Ready (`/readyz`, `lbctl status`): alive and the first sync done.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the agent is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        let mut reason = if let Some(reason) = self.not_live_reason() {
            reason
        } else if !self.synced {
            "first sync not done".to_owned()
        } else {
            return None;
        };
        if let Some(err) = &self.last_sync_error {
            reason.push_str(&format!(" (last sync error: {err})"));
        }
        Some(reason)
    }
}

/// One service, as `lbctl service list` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// The `ServiceId`.
    pub id: u32,
    /// `VIP:port/PROTO` as [`crate::addr::L4Addr`] writes it: `10.96.0.10:53/UDP`,
    /// `[fd00::1]:80/TCP`.
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `ExternalIPs` or `LoadBalancer`.
    #[serde(rename = "type")]
    pub service_type: String,
    /// The Service as `namespace/name`; empty when the agent has not seen it this run (a
    /// frontend restored from the pinned maps before the first sync).
    #[serde(default)]
    pub name: String,
    /// Further properties in Cilium's words: `Local` (a traffic policy Local),
    /// `sessionAffinity` (ClientIP), `check source-range` (`loadBalancerSourceRanges`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Backends in slot order.
    pub backends: Vec<BackendRow>,
}

/// One backend of a [`ServiceRow`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRow {
    /// The `BackendId`.
    pub id: u32,
    /// `addr:port/PROTO` as [`crate::addr::L4Addr`] writes it (`[fd00::c2]:80/TCP` for IPv6).
    pub address: String,
    /// `active` or `terminating`.
    pub state: BackendState,
}

/// Whether new flows may select a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Selected for new flows.
    Active,
    /// Kept for established flows only.
    Terminating,
}

impl BackendState {
    /// The word `service list` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Terminating => "terminating",
        }
    }
}

/// One conntrack entry, as `lbctl bpf ct list` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtRow {
    /// `tcp` (`LB4_CT_TCP`), `any` (`LB4_CT_ANY`), `tcp6` (`LB6_CT_TCP`) or `any6`
    /// (`LB6_CT_ANY`).
    pub map: String,
    /// `TCP`, `UDP`, or the protocol number.
    pub proto: String,
    /// `service` (client → VIP) or `reply` (backend → client or node).
    pub direction: String,
    /// The key's source, `addr:port` (`[addr]:port` for IPv6).
    pub source: String,
    /// The key's destination, `addr:port`.
    pub destination: String,
    /// Seconds until the entry expires; 0 or less: expired (ignored, deleted by the next GC).
    pub expires_in: i64,
    /// Flag names (`snat`, `from-netdev`, `closing`, `seen-reply`, `established`).
    pub flags: Vec<String>,
    /// The service id the flow was translated for.
    pub rev_nat: u32,
    /// The flow's backend id.
    pub backend_id: u32,
    /// Service entries: the backend, `addr:port`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backend: Option<String>,
    /// Service entries of SNATed flows: the node's source, `addr:port`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snat: Option<String>,
    /// Reply entries: the VIP restored as the source, `addr:port`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vip: Option<String>,
    /// Reply entries: the client as it sent the flow, `addr:port`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client: Option<String>,
}

impl CtRow {
    /// The row of the entry `entry` under `key` (either family's) in map `map` (`tcp`, `any`,
    /// `tcp6` or `any6`), at `now` in the datapath's clock.
    pub fn new<K: CtRowKey>(map: &str, key: &K, entry: &K::Entry, now: u32) -> Self {
        key.row(map, entry, now)
    }

    /// What both families' rows share: everything but the kind's own addresses.
    fn header(
        map: &str,
        protocol: u8,
        source: String,
        destination: String,
        (expires, flag_bits, kind): (u32, u16, u8),
        (rev_nat, backend_id): (u32, u32),
        now: u32,
    ) -> Self {
        let names = [
            (CT_F_SNAT, "snat"),
            (CT_F_FROM_NETDEV, "from-netdev"),
            (CT_F_CLOSING, "closing"),
            (CT_F_SEEN_REPLY, "seen-reply"),
            (CT_F_ESTABLISHED, "established"),
        ];
        let flags = names
            .iter()
            .filter(|(bit, _)| flag_bits & bit != 0)
            .map(|(_, name)| (*name).to_owned())
            .collect();
        Self {
            map: map.to_owned(),
            proto: lb_common::proto::name(protocol)
                .map_or_else(|| protocol.to_string(), str::to_owned),
            direction: match kind {
                CT_SERVICE => "service".to_owned(),
                CT_REPLY => "reply".to_owned(),
                other => format!("unknown({other})"),
            },
            source,
            destination,
            expires_in: i64::from(expires) - i64::from(now),
            flags,
            rev_nat,
            backend_id,
            backend: None,
            snat: None,
            vip: None,
            client: None,
        }
    }
}

/// A conntrack key of either family (`CtKey4`, `CtKey6`) with the entry type of its maps, as
/// [`CtRow::new`] reads them.
pub trait CtRowKey {
    /// The value type of the key's maps (`CtEntry`, `CtEntry6`).
    type Entry;
    /// The row of `entry` under this key; see [`CtRow::new`].
    fn row(&self, map: &str, entry: &Self::Entry, now: u32) -> CtRow;
}

/// `addr:port` of an address and a port (network byte order) of either family.
fn socket(addr: impl AddrField, port: u16) -> String {
    socket_text(addr.ip(), u16::from_be(port))
}

// The families' key and entry types have the same field names (their addresses differ in
// type only): one body makes both families' rows.
macro_rules! ct_row_key {
    ($key:ty, $entry:ty) => {
        impl CtRowKey for $key {
            type Entry = $entry;

            fn row(&self, map: &str, entry: &$entry, now: u32) -> CtRow {
                let mut row = CtRow::header(
                    map,
                    self.proto,
                    socket(self.saddr, self.sport),
                    socket(self.daddr, self.dport),
                    (entry.expires(), entry.flags(), entry.kind()),
                    (entry.service().rev_nat, entry.service().backend_id),
                    now,
                );
                match entry.kind() {
                    CT_SERVICE => {
                        let service = entry.service();
                        row.backend = Some(socket(service.backend_addr, service.backend_port));
                        if service.flags & CT_F_SNAT != 0 {
                            row.snat = Some(socket(service.snat_addr, service.snat_port));
                        }
                    }
                    CT_REPLY => {
                        let reply = entry.reply();
                        row.vip = Some(socket(reply.vip, reply.vip_port));
                        row.client = Some(socket(reply.client_addr, reply.client_port));
                    }
                    _ => {}
                }
                row
            }
        }
    };
}

ct_row_key!(CtKey4, CtEntry);
ct_row_key!(CtKey6, CtEntry6);

/// A drop event decoded from `lb_common::event::DropEvent` or `DropEvent6` (the `From` impls
/// below): addresses as `IpAddr` (JSON strings, `"192.168.56.10"`, `"fd00:56::10"`), ports in
/// host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEventRecord {
    /// The `DropReason` number.
    pub reason: u8,
    /// The `Hook` number.
    pub hook: u8,
    /// The `SourceFile` number.
    pub file: u8,
    /// Line of the drop site.
    pub line: u16,
    /// The skb hash.
    pub flow_hash: u32,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    /// IP protocol.
    pub proto: u8,
    /// TCP flags (`lb_common::event::tcp_flags`).
    pub tcp_flags: u8,
    /// Source address.
    pub saddr: IpAddr,
    /// Destination address.
    pub daddr: IpAddr,
    /// Source port (0 without ports).
    pub sport: u16,
    /// Destination port (0 without ports).
    pub dport: u16,
    /// Packet length in bytes.
    pub len: u32,
}

// `DropEvent` and `DropEvent6` differ in their addresses' type only: one body decodes both.
// Addresses and ports sit in an event in network byte order.
macro_rules! drop_event_record {
    ($event:ty) => {
        impl From<&$event> for DropEventRecord {
            fn from(event: &$event) -> Self {
                Self {
                    reason: event.reason,
                    hook: event.hook,
                    file: event.file,
                    line: event.line,
                    flow_hash: event.flow_hash,
                    ifindex: event.ifindex,
                    proto: event.proto,
                    tcp_flags: event.tcp_flags,
                    saddr: event.saddr.ip(),
                    daddr: event.daddr.ip(),
                    sport: u16::from_be(event.sport),
                    dport: u16::from_be(event.dport),
                    len: event.len,
                }
            }
        }
    };
}

drop_event_record!(DropEvent);
drop_event_record!(DropEvent6);

/// Counters and gauges for `/metrics`, read from the agent when scraped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Drops by reason and hook (summed over CPUs).
    pub drops: Vec<DropCount>,
    /// Services programmed.
    pub services: u64,
    /// Backends programmed.
    pub backends: u64,
    /// Completed sync passes.
    pub syncs: u64,
    /// Sync passes that failed.
    pub sync_errors: u64,
    /// Duration of the last sync pass, in seconds.
    pub last_sync_duration_seconds: f64,
    /// Sum of all sync durations, in seconds.
    pub sync_duration_seconds_sum: f64,
    /// Expired conntrack entries the GC deleted.
    #[serde(default)]
    pub ct_gc_deleted: u64,
    /// Live entries in `LB4_CT_TCP` at the last GC pass.
    #[serde(default)]
    pub ct_entries_tcp: u64,
    /// Live entries in `LB4_CT_ANY` at the last GC pass.
    #[serde(default)]
    pub ct_entries_any: u64,
    /// The datapath is loaded and none of its pins, links or readers has gone (`/healthz`).
    #[serde(default)]
    pub datapath_healthy: bool,
    /// Frontends the last sync could not program because a map was full.
    #[serde(default)]
    pub services_not_programmed: u64,
    /// Files and objects the source skipped as malformed since start.
    #[serde(default)]
    pub malformed_objects: u64,
    /// Failed watches (kube) or directory reads (file) since start.
    #[serde(default)]
    pub watch_errors: u64,
    /// Drop events monitor clients lost by reading too slowly, since start.
    #[serde(default)]
    pub lost_events: u64,
    /// `LB_EVENTS` records the agent's event reader skipped since start: of a kind it does not
    /// know, or shorter than their kind.
    #[serde(default)]
    pub skipped_events: u64,
    /// Fill levels of the sized maps.
    #[serde(default)]
    pub maps: Vec<MapFill>,
    /// Durations of sync passes, full and incremental, in seconds.
    #[serde(default)]
    pub sync_duration: Histogram,
    /// From an EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` to the map
    /// write that made its change live, in seconds (kube-proxy's
    /// `network_programming_duration_seconds`).
    #[serde(default)]
    pub network_programming_duration: Histogram,
    /// Map entries a periodic full resync found changed behind the agent's back, and repaired.
    #[serde(default)]
    pub sync_repairs: u64,
}

/// A Prometheus histogram: cumulative counts per upper bound, the sum and the count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// (upper bound `le`, observations at or below it), bounds ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn with_bounds(bounds: &[f64]) -> Self {
        Self {
            buckets: bounds.iter().map(|le| (*le, 0)).collect(),
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, value: f64) {
        for (le, count) in &mut self.buckets {
            if value <= *le {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// One `LB_METRICS` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCount {
    /// The `DropReason` number.
    pub reason: u8,
    /// The `Hook` number.
    pub hook: u8,
    /// Packets dropped.
    pub packets: u64,
    /// Bytes dropped.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let line = serde_json::to_string(&Request::ConfigSet {
            key: "bpf-lb-external-clusterip".into(),
            value: "true".into(),
        })
        .expect("serialize");
        assert_eq!(
            line,
            r#"{"request":"config_set","key":"bpf-lb-external-clusterip","value":"true"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"status"}"#).expect("parse"),
            Request::Status
        );
    }

    #[test]
    fn a_drop_event_decodes_to_host_order() {
        let event = DropEvent {
            kind: lb_common::event::EVENT_DROP,
            reason: 174,
            file: 3,
            hook: 1,
            line: 42,
            tcp_flags: lb_common::event::tcp_flags::SYN,
            proto: lb_common::proto::TCP,
            ifindex: 2,
            flow_hash: 0x7558_de48,
            saddr: u32::from_ne_bytes([192, 168, 56, 10]),
            daddr: u32::from_ne_bytes([10, 96, 229, 67]),
            sport: 33802u16.to_be(),
            dport: 80u16.to_be(),
            len: 60,
        };
        let record = DropEventRecord::from(&event);
        assert_eq!(record.saddr, IpAddr::from([192, 168, 56, 10]));
        assert_eq!(record.daddr, IpAddr::from([10, 96, 229, 67]));
        assert_eq!((record.sport, record.dport), (33802, 80));
        assert_eq!(
            (record.reason, record.hook, record.file, record.line),
            (174, 1, 3, 42)
        );
        assert_eq!(
            (record.flow_hash, record.ifindex, record.len),
            (0x7558_de48, 2, 60)
        );
    }

    #[test]
    fn a_conntrack_entry_becomes_a_row_in_host_order() {
        let key = CtKey4 {
            saddr: u32::from_ne_bytes([10, 244, 1, 5]),
            daddr: u32::from_ne_bytes([10, 244, 0, 7]),
            sport: 8080u16.to_be(),
            dport: 40000u16.to_be(),
            proto: lb_common::proto::TCP,
            _pad: 0,
            _pad2: 0,
        };
        let reply = lb_common::conntrack::CtReply {
            expires: 160,
            kind: CT_REPLY,
            flags: CT_F_SEEN_REPLY,
            backend_id: 2,
            rev_nat: 1,
            vip: u32::from_ne_bytes([10, 96, 0, 10]),
            vip_port: 80u16.to_be(),
            client_addr: u32::from_ne_bytes([10, 244, 0, 7]),
            client_port: 40000u16.to_be(),
            ..Default::default()
        };
        let row = CtRow::new("tcp", &key, &CtEntry::from(reply), 100);
        assert_eq!(
            (
                row.direction.as_str(),
                row.source.as_str(),
                row.destination.as_str()
            ),
            ("reply", "10.244.1.5:8080", "10.244.0.7:40000")
        );
        assert_eq!(
            (row.expires_in, row.flags.clone()),
            (60, vec!["seen-reply".to_owned()])
        );
        assert_eq!(row.vip.as_deref(), Some("10.96.0.10:80"));
        assert_eq!(row.client.as_deref(), Some("10.244.0.7:40000"));
        assert_eq!(row.backend, None);
    }

    fn v6(text: &str) -> lb_common::Addr6 {
        let ip: std::net::Ipv6Addr = text.parse().expect("ipv6");
        lb_common::addr6_from_octets(ip.octets())
    }

    #[test]
    fn an_ipv6_drop_event_decodes_to_host_order_and_json_strings() {
        let event = DropEvent6 {
            kind: lb_common::event::EVENT_DROP6,
            reason: 174,
            file: 3,
            hook: 1,
            line: 42,
            tcp_flags: lb_common::event::tcp_flags::SYN,
            proto: lb_common::proto::TCP,
            ifindex: 2,
            flow_hash: 0x7558_de48,
            saddr: v6("fd00:56::10"),
            daddr: v6("fd00:96::e5:43"),
            sport: 33802u16.to_be(),
            dport: 80u16.to_be(),
            len: 80,
        };
        let record = DropEventRecord::from(&event);
        assert_eq!(record.saddr, "fd00:56::10".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            record.daddr,
            "fd00:96::e5:43".parse::<IpAddr>().expect("ip")
        );
        assert_eq!((record.sport, record.dport, record.len), (33802, 80, 80));
        let json = serde_json::to_string(&Response::Drop(record)).expect("serialize");
        assert!(
            json.contains(r#""saddr":"fd00:56::10","daddr":"fd00:96::e5:43""#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Response>(&json).expect("parse"),
            Response::Drop(record)
        );
    }

    #[test]
    fn an_ipv4_drop_record_keeps_its_json() {
        // What agents and clients of before IPv6 wrote and read: dotted strings.
        let line = r#"{"response":"drop","reason":174,"hook":1,"file":3,"line":42,"flow_hash":0,"ifindex":2,"proto":6,"tcp_flags":2,"saddr":"192.168.56.10","daddr":"10.96.229.67","sport":33802,"dport":80,"len":60}"#;
        let Response::Drop(record) = serde_json::from_str::<Response>(line).expect("parse") else {
            panic!("not a drop");
        };
        assert_eq!(record.saddr, IpAddr::from([192, 168, 56, 10]));
        assert_eq!(
            serde_json::to_string(&Response::Drop(record)).expect("json"),
            line
        );
    }

    #[test]
    fn an_ipv6_conntrack_entry_becomes_a_row_with_bracketed_addresses() {
        let key = CtKey6 {
            saddr: v6("fd00:56::10"),
            daddr: v6("fd00:96::e5:43"),
            sport: 33802u16.to_be(),
            dport: 80u16.to_be(),
            proto: lb_common::proto::TCP,
            _pad: 0,
            _pad2: 0,
        };
        let service = lb_common::conntrack::CtService6 {
            expires: 130,
            kind: CT_SERVICE,
            flags: CT_F_SNAT | CT_F_FROM_NETDEV,
            backend_id: 4,
            rev_nat: 2,
            snat_port: 40001u16.to_be(),
            snat_addr: v6("fd00:56::4"),
            backend_addr: v6("fd00:10:112:1::c2"),
            backend_port: 80u16.to_be(),
            ..Default::default()
        };
        let row = CtRow::new("tcp6", &key, &CtEntry6::from(service), 100);
        assert_eq!(
            (
                row.direction.as_str(),
                row.source.as_str(),
                row.destination.as_str(),
                row.expires_in
            ),
            ("service", "[fd00:56::10]:33802", "[fd00:96::e5:43]:80", 30)
        );
        assert_eq!(row.backend.as_deref(), Some("[fd00:10:112:1::c2]:80"));
        assert_eq!(row.snat.as_deref(), Some("[fd00:56::4]:40001"));
        assert_eq!(row.flags, ["snat", "from-netdev"]);
        assert_eq!((row.rev_nat, row.backend_id), (2, 4));
    }

    #[test]
    fn not_ready_reason_names_what_is_missing() {
        let mut status = StatusReply::default();
        assert_eq!(
            status.not_ready_reason().as_deref(),
            Some("datapath not loaded")
        );
        status.datapath_loaded = true;
        status.last_sync_error = Some("map `LB4_SERVICES` is full".into());
        assert_eq!(
            status.not_ready_reason().as_deref(),
            Some("first sync not done (last sync error: map `LB4_SERVICES` is full)")
        );
        status.synced = true;
        assert!(status.is_ready());
        assert_eq!(status.not_ready_reason(), None);
    }
}
