//! `lbctl monitor --type drop [-o json]`: prints drop events as they arrive, one line each,
//! flushed per line so `| grep` sees them at once, until interrupted.
//!
//! The text line is Cilium 1.12–1.15's, byte for byte:
//! `xx drop (REASON) flow HASH to endpoint 0, file FILE line N, , identity SRC->unknown: SUMMARY`
//! where the doubled comma is Cilium's (its format ends in `", "` and the identity part starts
//! with `", identity"`), SRC is `world` for from-netdev and `unknown` for from-pod (lb has no
//! security identities), and SUMMARY is `sIP:sPort -> dIP:dPort tcp FLAGS`, `… udp`,
//! `sIP -> dIP icmp` or `sIP -> dIP` for other protocols. IPv6 drops print the same way, an
//! address followed by a port in brackets as Cilium's `JoinHostPort` writes it
//! (`[fd00:56::10]:33802 -> [fd00:96::e5:43]:80 tcp SYN`, `fd00:56::10 -> fd00:96::1 icmpv6`). `-o json` prints one object per line.
//! The words for reasons, hooks and files come from `lb_api::drop`.

use std::io::Write;
use std::net::IpAddr;

use lb_api::addr::socket_text;
use lb_api::client::{Client, Error as ClientError};
use lb_api::drop::{file_text, hook_text, reason_text};
use lb_api::proto::{DropEventRecord, Response};
use lb_common::drop::Hook;
use lb_common::event::tcp_flags;
use lb_common::proto;
use serde::Serialize;

use super::Error;
use crate::output::Format;

/// Streams drop events from `client` to `out` until the agent or the reader goes away.
pub fn drops(client: Client, format: Option<Format>, out: &mut dyn Write) -> Result<(), Error> {
    let mut stream = client.monitor_drops()?;
    loop {
        match stream.recv()? {
            Some(Response::Drop(event)) => {
                let text = match format {
                    Some(Format::Json) => json(&event),
                    None => text(&event),
                };
                writeln!(out, "{text}").map_err(Error::Stdout)?;
                out.flush().map_err(Error::Stdout)?;
            }
            Some(Response::Lost { count }) => {
                eprintln!("lbctl: lost {count} drop events (lbctl read too slowly)");
            }
            Some(_) => {
                return Err(ClientError::Unexpected { request: "monitor" }.into());
            }
            None => return Err(Error::StreamEnded),
        }
    }
}

/// The source identity Cilium would print: traffic from a netdev is `world`.
fn source_identity(hook: u8) -> &'static str {
    match Hook::from_u8(hook) {
        Some(Hook::FromNetdev) => "world",
        _ => "unknown",
    }
}

/// The protocol as Cilium's line names it (`tcp`, `udp`, `icmp`), if it has a name.
fn proto_text(number: u8) -> Option<String> {
    proto::name(number).map(str::to_ascii_lowercase)
}

/// TCP flags in Cilium's order (SYN, ACK, RST, FIN), comma-separated; other flags are not
/// printed.
fn tcp_flags_text(flags: u8) -> String {
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

fn has_ports(number: u8) -> bool {
    matches!(number, proto::TCP | proto::UDP)
}

fn endpoint(addr: IpAddr, port: u16, number: u8) -> String {
    if has_ports(number) {
        socket_text(addr, port)
    } else {
        addr.to_string()
    }
}

/// The connection summary after the `: `.
fn summary(event: &DropEventRecord) -> String {
    let src = endpoint(event.saddr, event.sport, event.proto);
    let dst = endpoint(event.daddr, event.dport, event.proto);
    // Cilium appends " " and the flags even when no flag is set.
    if event.proto == proto::TCP {
        return format!("{src} -> {dst} tcp {}", tcp_flags_text(event.tcp_flags));
    }
    match proto_text(event.proto) {
        Some(name) => format!("{src} -> {dst} {name}"),
        None => format!("{src} -> {dst}"),
    }
}

/// The Cilium 1.12–1.15 text line, without a trailing newline.
fn text(event: &DropEventRecord) -> String {
    format!(
        "xx drop ({reason}) flow {flow:#x} to endpoint 0, file {file} line {line}, , identity {src}->unknown: {summary}",
        reason = reason_text(event.reason),
        flow = event.flow_hash,
        file = file_text(event.file),
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
fn json(event: &DropEventRecord) -> String {
    let line = JsonLine {
        kind: "drop",
        reason: event.reason,
        message: reason_text(event.reason),
        hook: hook_text(event.hook),
        file: file_text(event.file),
        line: event.line,
        flow: event.flow_hash,
        ifindex: event.ifindex,
        src: endpoint(event.saddr, event.sport, event.proto),
        dst: endpoint(event.daddr, event.dport, event.proto),
        proto: proto_text(event.proto).unwrap_or_else(|| event.proto.to_string()),
        tcp_flags: (event.proto == proto::TCP).then(|| tcp_flags_text(event.tcp_flags)),
        len: event.len,
    };
    // Serializing a struct of strings and integers cannot fail; fall back to the text form
    // rather than panic.
    serde_json::to_string(&line).unwrap_or_else(|_| text(event))
}
#[cfg(test)]
mod tests {
    use lb_common::drop::{DropReason, SourceFile};
    use lb_common::event::{DropEvent, DropEvent6};

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

    /// The IPv6 twin of `event`: the router's fd00:56::10 to the ClusterIP fd00:96::e5:43.
    fn event6(reason: DropReason, hook: Hook, proto: u8, flags: u8) -> DropEvent6 {
        let v4 = event(reason, hook, proto, flags);
        let addr = |text: &str| {
            let ip: std::net::Ipv6Addr = text.parse().expect("ipv6");
            lb_common::addr6_from_octets(ip.octets())
        };
        DropEvent6 {
            kind: lb_common::event::EVENT_DROP6,
            reason: v4.reason,
            file: v4.file,
            hook: v4.hook,
            line: v4.line,
            tcp_flags: v4.tcp_flags,
            proto: v4.proto,
            ifindex: v4.ifindex,
            flow_hash: v4.flow_hash,
            saddr: addr("fd00:56::10"),
            daddr: addr("fd00:96::e5:43"),
            sport: v4.sport,
            dport: v4.dport,
            len: 80,
        }
    }

    #[test]
    fn ipv6_drops_print_ciliums_line_with_bracketed_addresses() {
        let syn = event6(
            DropReason::IsClusterIp,
            Hook::FromNetdev,
            proto::TCP,
            tcp_flags::SYN,
        );
        assert_eq!(
            text(&DropEventRecord::from(&syn)),
            "xx drop (Is a ClusterIP) flow 0x0 to endpoint 0, file policy.rs line 42, , identity world->unknown: [fd00:56::10]:33802 -> [fd00:96::e5:43]:80 tcp SYN"
        );
        let udp = event6(DropReason::NoService, Hook::FromPod, proto::UDP, 0);
        assert!(
            text(&DropEventRecord::from(&udp))
                .ends_with("unknown->unknown: [fd00:56::10]:33802 -> [fd00:96::e5:43]:80 udp"),
            "{}",
            text(&DropEventRecord::from(&udp))
        );
        let icmp = event6(DropReason::IsClusterIp, Hook::FromNetdev, proto::ICMPV6, 0);
        assert!(
            text(&DropEventRecord::from(&icmp)).ends_with(": fd00:56::10 -> fd00:96::e5:43 icmpv6"),
            "{}",
            text(&DropEventRecord::from(&icmp))
        );
        assert_eq!(
            json(&DropEventRecord::from(&syn)),
            r#"{"type":"drop","reason":174,"message":"Is a ClusterIP","hook":"from-netdev","file":"policy.rs","line":42,"flow":0,"ifindex":2,"src":"[fd00:56::10]:33802","dst":"[fd00:96::e5:43]:80","proto":"tcp","tcp_flags":"SYN","len":80}"#
        );
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
