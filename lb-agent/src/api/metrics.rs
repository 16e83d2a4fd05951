//! Every metric lb-agent exports, declared in one place and rendered by `prometheus-client`
//! (the Prometheus project's Rust client) in the Prometheus text format, version 0.0.4.
//!
//! The agent keeps its numbers where they arise (the datapath's per-CPU counters, the sync
//! loop's progress, the sources' counters) and hands them over as one `MetricsSnapshot` per
//! scrape; `render` registers each metric, with its value, in a fresh registry. Names follow
//! Prometheus' conventions (base units, `_total` on counters, which the client appends) and
//! keep the names users already grep for; docs/operations.md lists them all.
use lb_api::drop::{hook_text, reason_text};
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{
        MetricType, TypedMetric,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        info::Info,
    },
    registry::Registry,
};

use super::proto::{Histogram, MetricsSnapshot};

/// The `Content-Type` of what `render` returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// A histogram the agent observed into (`proto::Histogram`, cumulative counts per bound).
#[derive(Debug)]
struct Buckets(Histogram);

impl TypedMetric for Buckets {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Buckets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The client takes each bucket's own count and accumulates them; `+Inf` comes last.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .map(|(le, cumulative)| {
                let own = cumulative.saturating_sub(below);
                below = *cumulative;
                (*le, own)
            })
            .collect();
        buckets.push((f64::INFINITY, self.0.count.saturating_sub(below)));
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn counter(value: u64) -> ConstCounter {
    ConstCounter::new(value)
}

fn gauge(value: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// Every metric, with the values of `snapshot`, in the Prometheus text format.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut registry = Registry::default();

    registry.register(
        "lb_build",
        "lb-agent's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );

    let mut drops = snapshot.drops.clone();
    drops.sort_by_key(|count| (count.reason, count.hook));
    let drop_labels = |reason: u8, hook: u8| -> Labels {
        vec![
            ("reason", reason_text(reason)),
            ("reason_code", reason.to_string()),
            ("hook", hook_text(hook)),
        ]
    };
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    for count in &drops {
        let labels = drop_labels(count.reason, count.hook);
        packets.get_or_create(&labels).inc_by(count.packets);
        bytes.get_or_create(&labels).inc_by(count.bytes);
    }
    registry.register(
        "lb_drop_count",
        "Packets dropped by the datapath, by reason and hook",
        packets,
    );
    registry.register(
        "lb_drop_bytes",
        "Bytes dropped by the datapath, by reason and hook",
        bytes,
    );

    registry.register(
        "lb_services",
        "Services programmed in the datapath",
        gauge(snapshot.services),
    );
    registry.register(
        "lb_backends",
        "Backends programmed in the datapath",
        gauge(snapshot.backends),
    );
    registry.register(
        "lb_services_not_programmed",
        "Frontends the last sync could not program because a map was full",
        gauge(snapshot.services_not_programmed),
    );
    registry.register("lb_sync", "Completed sync passes", counter(snapshot.syncs));
    registry.register(
        "lb_sync_errors",
        "Sync passes that failed",
        counter(snapshot.sync_errors),
    );
    registry.register(
        "lb_sync_duration_seconds",
        "Duration of successful sync passes, full and incremental",
        Buckets(snapshot.sync_duration.clone()),
    );
    registry.register(
        "lb_network_programming_duration_seconds",
        "From an EndpointSlice's last-change-trigger-time annotation to the map write that made \
         the change live (kube-proxy's network_programming_duration_seconds)",
        Buckets(snapshot.network_programming_duration.clone()),
    );
    registry.register(
        "lb_sync_repairs",
        "Map entries a periodic full resync found changed behind the agent's back, and repaired",
        counter(snapshot.sync_repairs),
    );
    registry.register(
        "lb_last_sync_duration_seconds",
        "Duration of the last sync pass",
        ConstGauge::new(snapshot.last_sync_duration_seconds),
    );
    registry.register(
        "lb_malformed_objects",
        "Files and objects the source skipped as malformed",
        counter(snapshot.malformed_objects),
    );
    registry.register(
        "lb_watch_errors",
        "Failed watches (kube) or directory reads (file) of the source",
        counter(snapshot.watch_errors),
    );
    registry.register(
        "lb_monitor_events_lost",
        "Drop events lbctl monitor clients lost by reading too slowly",
        counter(snapshot.lost_events),
    );
    registry.register(
        "lb_events_skipped",
        "Ring buffer records the event reader could not decode (unknown kind or too short)",
        counter(snapshot.skipped_events),
    );

    registry.register(
        "lb_ct_gc_deleted",
        "Expired conntrack entries deleted by the GC",
        counter(snapshot.ct_gc_deleted),
    );
    let ct_entries = Family::<Labels, Gauge>::default();
    for (map, value) in [
        ("tcp", snapshot.ct_entries_tcp),
        ("any", snapshot.ct_entries_any),
    ] {
        ct_entries
            .get_or_create(&vec![("map", map.to_owned())])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    registry.register(
        "lb_ct_entries",
        "Live conntrack entries at the last GC pass, by map",
        ct_entries,
    );
    let pressure = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for map in &snapshot.maps {
        let ratio = if map.max_entries == 0 {
            0.0
        } else {
            map.entries as f64 / map.max_entries as f64
        };
        pressure
            .get_or_create(&vec![("map_name", map.name.clone())])
            .set(ratio);
    }
    registry.register(
        "lb_bpf_map_pressure",
        "Fill level of each sized map, entries over capacity (0 to 1; conntrack at the last GC pass)",
        pressure,
    );
    registry.register(
        "lb_datapath_healthy",
        "1 while the datapath is loaded and none of its pins, links or readers has gone (as /healthz), else 0",
        gauge(u64::from(snapshot.datapath_healthy)),
    );

    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{DropCount, MapFill};

    /// Every metric in the text format, with `HELP`, `TYPE` and `_total` as Prometheus expects
    /// (compared as sorted lines: the order of a family's samples is the client's).
    #[test]
    fn every_metric_renders_in_the_prometheus_text_format() {
        let snapshot = MetricsSnapshot {
            drops: vec![
                DropCount {
                    reason: 174,
                    hook: 1,
                    packets: 3,
                    bytes: 180,
                },
                DropCount {
                    reason: 158,
                    hook: 2,
                    packets: 1,
                    bytes: 60,
                },
            ],
            services: 2,
            backends: 3,
            syncs: 4,
            sync_errors: 1,
            last_sync_duration_seconds: 0.25,
            sync_duration_seconds_sum: 1.5,
            ct_gc_deleted: 5,
            ct_entries_tcp: 6,
            ct_entries_any: 2,
            datapath_healthy: true,
            services_not_programmed: 1,
            malformed_objects: 7,
            watch_errors: 8,
            lost_events: 9,
            skipped_events: 10,
            maps: vec![MapFill {
                name: "LB4_SERVICES".into(),
                entries: 256,
                max_entries: 1024,
            }],
            sync_duration: {
                let mut h = Histogram::with_bounds(&[0.001, 1.0]);
                for seconds in [0.0005, 0.25, 0.25, 1.0] {
                    h.observe(seconds);
                }
                h
            },
            network_programming_duration: Histogram::with_bounds(&[0.001]),
            sync_repairs: 7,
        };
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        let expected = r#"# HELP lb_build_info lb-agent's version.
# TYPE lb_build_info gauge
lb_build_info{version="0.1.0"} 1
# HELP lb_drop_count_total Packets dropped by the datapath, by reason and hook.
# TYPE lb_drop_count_total counter
lb_drop_count_total{reason="Service backend not found",reason_code="158",hook="from-pod"} 1
lb_drop_count_total{reason="Is a ClusterIP",reason_code="174",hook="from-netdev"} 3
# HELP lb_drop_bytes_total Bytes dropped by the datapath, by reason and hook.
# TYPE lb_drop_bytes_total counter
lb_drop_bytes_total{reason="Is a ClusterIP",reason_code="174",hook="from-netdev"} 180
lb_drop_bytes_total{reason="Service backend not found",reason_code="158",hook="from-pod"} 60
# HELP lb_services Services programmed in the datapath.
# TYPE lb_services gauge
lb_services 2
# HELP lb_backends Backends programmed in the datapath.
# TYPE lb_backends gauge
lb_backends 3
# HELP lb_services_not_programmed Frontends the last sync could not program because a map was full.
# TYPE lb_services_not_programmed gauge
lb_services_not_programmed 1
# HELP lb_sync_total Completed sync passes.
# TYPE lb_sync_total counter
lb_sync_total 4
# HELP lb_sync_errors_total Sync passes that failed.
# TYPE lb_sync_errors_total counter
lb_sync_errors_total 1
# HELP lb_sync_duration_seconds Duration of successful sync passes, full and incremental.
# TYPE lb_sync_duration_seconds histogram
lb_sync_duration_seconds_bucket{le="0.001"} 1
lb_sync_duration_seconds_bucket{le="1"} 4
lb_sync_duration_seconds_bucket{le="+Inf"} 4
lb_sync_duration_seconds_sum 1.5005
lb_sync_duration_seconds_count 4
# HELP lb_network_programming_duration_seconds From an EndpointSlice's last-change-trigger-time annotation to the map write that made the change live (kube-proxy's network_programming_duration_seconds).
# TYPE lb_network_programming_duration_seconds histogram
lb_network_programming_duration_seconds_bucket{le="0.001"} 0
lb_network_programming_duration_seconds_bucket{le="+Inf"} 0
lb_network_programming_duration_seconds_sum 0.0
lb_network_programming_duration_seconds_count 0
# HELP lb_sync_repairs_total Map entries a periodic full resync found changed behind the agent's back, and repaired.
# TYPE lb_sync_repairs_total counter
lb_sync_repairs_total 7
# HELP lb_last_sync_duration_seconds Duration of the last sync pass.
# TYPE lb_last_sync_duration_seconds gauge
lb_last_sync_duration_seconds 0.25
# HELP lb_malformed_objects_total Files and objects the source skipped as malformed.
# TYPE lb_malformed_objects_total counter
lb_malformed_objects_total 7
# HELP lb_watch_errors_total Failed watches (kube) or directory reads (file) of the source.
# TYPE lb_watch_errors_total counter
lb_watch_errors_total 8
# HELP lb_monitor_events_lost_total Drop events lbctl monitor clients lost by reading too slowly.
# TYPE lb_monitor_events_lost_total counter
lb_monitor_events_lost_total 9
# HELP lb_events_skipped_total Ring buffer records the event reader could not decode (unknown kind or too short).
# TYPE lb_events_skipped_total counter
lb_events_skipped_total 10
# HELP lb_ct_gc_deleted_total Expired conntrack entries deleted by the GC.
# TYPE lb_ct_gc_deleted_total counter
lb_ct_gc_deleted_total 5
# HELP lb_ct_entries Live conntrack entries at the last GC pass, by map.
# TYPE lb_ct_entries gauge
lb_ct_entries{map="any"} 2
lb_ct_entries{map="tcp"} 6
# HELP lb_bpf_map_pressure Fill level of each sized map, entries over capacity (0 to 1; conntrack at the last GC pass).
# TYPE lb_bpf_map_pressure gauge
lb_bpf_map_pressure{map_name="LB4_SERVICES"} 0.25
# HELP lb_datapath_healthy 1 while the datapath is loaded and none of its pins, links or readers has gone (as /healthz), else 0.
# TYPE lb_datapath_healthy gauge
lb_datapath_healthy 1
"#;
        assert_eq!(sorted(&render(&snapshot)), sorted(expected));
    }
}
