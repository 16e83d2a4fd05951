//! `lbctl bpf ct list [-o json]`: the conntrack maps, one line per entry, in the spirit of
//! Cilium's `cilium bpf ct list global`.
//!
//! A line: `TCP SERVICE 10.244.0.7:40000 -> 10.96.0.10:80 expires=21594 flags=[seen-reply
//! established] rev_nat=1 backend_id=2 backend=10.244.1.5:8080`. Reply entries end in
//! `vip=… client=…` instead of `backend=…` (and `snat=…` for SNATed service entries).
//! `expires` counts seconds from now; an entry at 0 or below has expired and waits for the GC.

use lb_api::proto::CtRow;

/// The lines, ready to print (entries in the agent's order: map, protocol, tuple).
pub fn lines(entries: &[CtRow]) -> String {
    let mut text = String::new();
    for row in entries {
        text.push_str(&format!(
            "{} {} {} -> {} expires={} flags=[{}] rev_nat={} backend_id={}",
            row.proto,
            row.direction.to_uppercase(),
            row.source,
            row.destination,
            row.expires_in,
            row.flags.join(" "),
            row.rev_nat,
            row.backend_id,
        ));
        for (name, value) in [
            ("backend", &row.backend),
            ("snat", &row.snat),
            ("vip", &row.vip),
            ("client", &row.client),
        ] {
            if let Some(value) = value {
                text.push_str(&format!(" {name}={value}"));
            }
        }
        text.push('\n');
    }
    text
}

/// `-o json`: the entries as an indented JSON array.
pub fn json(entries: &[CtRow]) -> String {
    let mut text = serde_json::to_string_pretty(entries).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_and_a_reply_entry_read_as_one_line_each() {
        let service = CtRow {
            map: "tcp".into(),
            proto: "TCP".into(),
            direction: "service".into(),
            source: "10.244.0.7:40000".into(),
            destination: "10.96.0.10:80".into(),
            expires_in: 21594,
            flags: vec!["seen-reply".into(), "established".into()],
            rev_nat: 1,
            backend_id: 2,
            backend: Some("10.244.1.5:8080".into()),
            snat: None,
            vip: None,
            client: None,
        };
        let reply = CtRow {
            direction: "reply".into(),
            source: "10.244.1.5:8080".into(),
            destination: "10.244.0.7:40000".into(),
            flags: vec![],
            backend: None,
            vip: Some("10.96.0.10:80".into()),
            client: Some("10.244.0.7:40000".into()),
            ..service.clone()
        };
        assert_eq!(
            lines(&[service, reply]),
            "TCP SERVICE 10.244.0.7:40000 -> 10.96.0.10:80 expires=21594 \
             flags=[seen-reply established] rev_nat=1 backend_id=2 backend=10.244.1.5:8080\n\
             TCP REPLY 10.244.1.5:8080 -> 10.244.0.7:40000 expires=21594 flags=[] rev_nat=1 \
             backend_id=2 vip=10.96.0.10:80 client=10.244.0.7:40000\n"
        );
    }
}
