//! Renders drop events as `lbctl monitor` prints them: Cilium 1.12–1.15's text line, byte for
//! byte, or one JSON object per line.
//!
//! The text line is
//! `xx drop (REASON) flow HASH to endpoint 0, file FILE line N, , identity SRC->unknown: SUMMARY`
//! where the doubled comma is Cilium's (its format ends in `", "` and the identity part starts
//! with `", identity"`), SRC is `world` for from-netdev and `unknown` for from-pod (lb has no
//! security identities), and SUMMARY is `sIP:sPort -> dIP:dPort tcp FLAGS`, `… udp`,
//! `sIP -> dIP icmp` or `sIP -> dIP` for other protocols.
//!
//! This module also decodes `lb_common::event::DropEvent` (network byte order) into the
//! printable [`DropEventRecord`].

use std::net::Ipv4Addr;

use lb_common::drop::{DropReason, Hook, SourceFile};
use lb_common::event::{DropEvent, tcp_flags};
use lb_common::proto;
use serde::Serialize;

use crate::api::proto::DropEventRecord;

impl From<&DropEvent> for DropEventRecord {
    fn from(event: &DropEvent) -> Self {
        // Addresses and ports sit in the event in network byte order; the in-memory bytes of
        // an address are its octets in order on any host.
        Self {
            reason: event.reason,
            hook: event.hook,
            file: event.file,
            line: event.line,
            flow_hash: event.flow_hash,
            ifindex: event.ifindex,
            proto: event.proto,
            tcp_flags: event.tcp_flags,
            saddr: Ipv4Addr::from(event.saddr.to_ne_bytes()),
            daddr: Ipv4Addr::from(event.daddr.to_ne_bytes()),
            sport: u16::from_be(event.sport),
            dport: u16::from_be(event.dport),
            len: event.len,
        }
    }
}

/// The reason as Cilium prints it: its message, or its number when lb does not know it.
pub fn reason_text(reason: u8) -> String {
    match DropReason::from_u8(reason) {
        Some(known) => known.message().to_owned(),
        None => reason.to_string(),
    }
}

/// The hook's name, or its number when unknown.
pub fn hook_text(hook: u8) -> String {
    match Hook::from_u8(hook) {
        Some(known) => known.name().to_owned(),
        None => hook.to_string(),
    }
}

/// The source identity Cilium would print: traffic from a netdev is `world`.
fn source_identity(hook: u8) -> &'static str {
    match Hook::from_u8(hook) {
        Some(Hook::FromNetdev) => "world",
        _ => "unknown",
    }
}

/// The protocol's name, if the summary names it.
fn proto_name(proto: u8) -> Option<&'static str> {
    match proto {
        proto::TCP => Some("tcp"),
        proto::UDP => Some("udp"),
        proto::ICMP => Some("icmp"),
        _ => None,
    }
}

/// TCP flags in Cilium's order (SYN, ACK, RST, FIN), comma-separated; other flags are not
/// printed.
pub fn tcp_flags_text(flags: u8) -> String {
    [
        (tcp_flags::SYN, "SYN"),
        (tcp_flags::ACK, "ACK"),
        (tcp_flags::RST, "RST"),
        (tcp_flags::FIN, "FIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect::<Vec<_>>()
    .join(", ")
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, proto::TCP | proto::UDP)
}

fn endpoint(addr: Ipv4Addr, port: u16, proto: u8) -> String {
    if has_ports(proto) {
        format!("{addr}:{port}")
    } else {
        addr.to_string()
    }
}

/// The connection summary after the `: `.
fn summary(event: &DropEventRecord) -> String {
    let src = endpoint(event.saddr, event.sport, event.proto);
    let dst = endpoint(event.daddr, event.dport, event.proto);
    match proto_name(event.proto) {
        // Cilium appends " " and the flags even when no flag is set.
        Some("tcp") => format!("{src} -> {dst} tcp {}", tcp_flags_text(event.tcp_flags)),
        Some(name) => format!("{src} -> {dst} {name}"),
        None => format!("{src} -> {dst}"),
    }
}

/// The Cilium 1.12–1.15 text line, without a trailing newline.
pub fn text(event: &DropEventRecord) -> String {
    format!(
        "xx drop ({reason}) flow {flow:#x} to endpoint 0, file {file} line {line}, , identity {src}->unknown: {summary}",
        reason = reason_text(event.reason),
        flow = event.flow_hash,
        file = SourceFile::from_u8(event.file).name(),
        line = event.line,
        src = source_identity(event.hook),
        summary = summary(event),
    )
}

/// The `-o json` object of one event, fields in a stable order.
#[derive(Debug, Serialize)]
struct JsonLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    reason: u8,
    message: String,
    hook: String,
    file: &'a str,
    line: u16,
    flow: u32,
    ifindex: u32,
    src: String,
    dst: String,
    proto: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_flags: Option<String>,
    len: u32,
}

/// The `-o json` form: one JSON object, without a trailing newline.
pub fn json(event: &DropEventRecord) -> String {
    let line = JsonLine {
        kind: "drop",
        reason: event.reason,
        message: reason_text(event.reason),
        hook: hook_text(event.hook),
        file: SourceFile::from_u8(event.file).name(),
        line: event.line,
        flow: event.flow_hash,
        ifindex: event.ifindex,
        src: endpoint(event.saddr, event.sport, event.proto),
        dst: endpoint(event.daddr, event.dport, event.proto),
        proto: proto_name(event.proto)
            .map(str::to_owned)
            .unwrap_or_else(|| event.proto.to_string()),
        tcp_flags: (event.proto == proto::TCP).then(|| tcp_flags_text(event.tcp_flags)),
        len: event.len,
    };
    // Serializing a struct of strings and integers cannot fail; fall back to the text form
    // rather than panic.
    serde_json::to_string(&line).unwrap_or_else(|_| text(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drop event as the datapath writes it (network byte order).
    fn event(reason: DropReason, hook: Hook, proto: u8, flags: u8) -> DropEvent {
        DropEvent {
            kind: lb_common::event::EVENT_DROP,
            reason: reason as u8,
            file: SourceFile::Policy as u8,
            hook: hook as u8,
            line: 42,
            tcp_flags: flags,
            proto,
            ifindex: 2,
            flow_hash: 0,
            saddr: u32::from_ne_bytes([192, 168, 56, 10]),
            daddr: u32::from_ne_bytes([10, 96, 229, 67]),
            sport: 33802u16.to_be(),
            dport: 80u16.to_be(),
            len: 60,
        }
    }

    fn line(event: &DropEvent) -> String {
        text(&DropEventRecord::from(event))
    }

    #[test]
    fn external_syn_to_cluster_ip_prints_ciliums_line() {
        let ev = event(
            DropReason::IsClusterIp,
            Hook::FromNetdev,
            proto::TCP,
            tcp_flags::SYN,
        );
        assert_eq!(
            line(&ev),
            "xx drop (Is a ClusterIP) flow 0x0 to endpoint 0, file policy.rs line 42, , identity world->unknown: 192.168.56.10:33802 -> 10.96.229.67:80 tcp SYN"
        );
    }

    #[test]
    fn flow_is_the_hash_in_hex_and_from_pod_is_unknown() {
        let mut ev = event(
            DropReason::NoService,
            Hook::FromPod,
            proto::TCP,
            tcp_flags::SYN | tcp_flags::ACK,
        );
        ev.flow_hash = 0x7558_de48;
        ev.file = SourceFile::Lb as u8;
        ev.line = 1480;
        assert_eq!(
            line(&ev),
            "xx drop (Service backend not found) flow 0x7558de48 to endpoint 0, file lb.rs line 1480, , identity unknown->unknown: 192.168.56.10:33802 -> 10.96.229.67:80 tcp SYN, ACK"
        );
    }

    #[test]
    fn tcp_flags_print_in_ciliums_order() {
        use tcp_flags::*;
        assert_eq!(tcp_flags_text(FIN), "FIN");
        assert_eq!(tcp_flags_text(RST), "RST");
        assert_eq!(tcp_flags_text(ACK), "ACK");
        assert_eq!(tcp_flags_text(FIN | ACK | PSH), "ACK, FIN");
        assert_eq!(tcp_flags_text(SYN | ACK | RST | FIN), "SYN, ACK, RST, FIN");
        let ev = event(DropReason::Invalid, Hook::FromNetdev, proto::TCP, PSH);
        assert!(line(&ev).ends_with(":80 tcp "), "{}", line(&ev));
    }

    #[test]
    fn udp_has_ports_icmp_and_others_do_not() {
        let udp = event(DropReason::NoService, Hook::FromPod, proto::UDP, 0);
        assert!(
            line(&udp).ends_with(": 192.168.56.10:33802 -> 10.96.229.67:80 udp"),
            "{}",
            line(&udp)
        );
        let icmp = event(DropReason::IsClusterIp, Hook::FromNetdev, proto::ICMP, 0);
        assert!(
            line(&icmp).ends_with(": 192.168.56.10 -> 10.96.229.67 icmp"),
            "{}",
            line(&icmp)
        );
        let gre = event(DropReason::IsClusterIp, Hook::FromNetdev, 47, 0);
        assert!(
            line(&gre).ends_with("world->unknown: 192.168.56.10 -> 10.96.229.67"),
            "{}",
            line(&gre)
        );
    }

    #[test]
    fn unknown_reason_and_file_print_as_number_and_unknown() {
        let mut ev = event(DropReason::Invalid, Hook::FromNetdev, proto::UDP, 0);
        ev.reason = 199;
        ev.file = 250;
        assert!(
            line(&ev).starts_with("xx drop (199) flow 0x0 to endpoint 0, file unknown line 42, , "),
            "{}",
            line(&ev)
        );
    }

    #[test]
    fn json_is_one_object_per_event() {
        let mut ev = event(
            DropReason::IsClusterIp,
            Hook::FromNetdev,
            proto::TCP,
            tcp_flags::SYN,
        );
        ev.flow_hash = 255;
        assert_eq!(
            json(&DropEventRecord::from(&ev)),
            r#"{"type":"drop","reason":174,"message":"Is a ClusterIP","hook":"from-netdev","file":"policy.rs","line":42,"flow":255,"ifindex":2,"src":"192.168.56.10:33802","dst":"10.96.229.67:80","proto":"tcp","tcp_flags":"SYN","len":60}"#
        );
        let icmp = event(DropReason::IsClusterIp, Hook::FromPod, proto::ICMP, 0);
        assert_eq!(
            json(&DropEventRecord::from(&icmp)),
            r#"{"type":"drop","reason":174,"message":"Is a ClusterIP","hook":"from-pod","file":"policy.rs","line":42,"flow":0,"ifindex":2,"src":"192.168.56.10","dst":"10.96.229.67","proto":"icmp","len":60}"#
        );
    }
}
