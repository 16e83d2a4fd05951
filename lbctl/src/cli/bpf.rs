//! `lbctl bpf ct list [-o json]`: the conntrack maps, one line per entry, in the spirit of
//! Cilium's `cilium bpf ct list global`; `lbctl bpf lb list [-o json]`: the services map in
//! the layout of `cilium bpf lb list` (see `lb_table`).
//!
//! A line: `TCP SERVICE 10.244.0.7:40000 -> 10.96.0.10:80 expires=21594 flags=[seen-reply
//! established] rev_nat=1 backend_id=2 backend=10.244.1.5:8080`. Reply entries end in
//! `vip=… client=…` instead of `backend=…` (and `snat=…` for SNATed service entries).
//! `expires` counts seconds from now; an entry at 0 or below has expired and waits for the GC.

use lb_api::proto::{CtRow, LbRow};

use crate::output::table as aligned;

/// `bpf lb list`: columns `SERVICE ADDRESS  BACKEND ADDRESS (REVNAT_ID) (SLOT)`, one row per
/// entry, the frontend written on its first row only; a master entry's backend is `0.0.0.0:0`
/// followed by its kind and flags in brackets.
pub fn lb_table(entries: &[LbRow]) -> String {
    let mut text = String::from("SERVICE ADDRESS\tBACKEND ADDRESS (REVNAT_ID) (SLOT)\t\n");
    let mut previous: Option<&str> = None;
    for row in entries {
        let frontend = if previous == Some(row.frontend.as_str()) {
            ""
        } else {
            row.frontend.as_str()
        };
        previous = Some(&row.frontend);
        let flags = if row.flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", row.flags.join(", "))
        };
        text.push_str(&format!(
            "{frontend}\t{} ({}) ({}){flags}\t\n",
            row.backend, row.rev_nat, row.slot
        ));
    }
    aligned(&text, 5, 3)
}

/// `bpf lb list -o json`: the entries as an indented JSON array.
pub fn lb_json(entries: &[LbRow]) -> String {
    let mut text = serde_json::to_string_pretty(entries).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}

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

    #[test]
    fn lb_list_prints_ciliums_columns_with_the_frontend_once() {
        let row = |frontend: &str, slot, rev_nat, backend: &str, flags: &[&str]| LbRow {
            frontend: frontend.into(),
            slot,
            rev_nat,
            backend: backend.into(),
            backend_id: u32::from(slot),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        };
        let entries = [
            row("10.96.0.10", 0, 0, "0.0.0.0:0", &["VIP"]),
            row(
                "10.96.0.10:53/UDP",
                0,
                2,
                "0.0.0.0:0",
                &["ClusterIP", "Local"],
            ),
            row("10.96.0.10:53/UDP", 1, 2, "10.244.1.42:53/UDP", &[]),
        ];
        assert_eq!(
            lb_table(&entries),
            concat!(
                "SERVICE ADDRESS     BACKEND ADDRESS (REVNAT_ID) (SLOT)\n",
                "10.96.0.10          0.0.0.0:0 (0) (0) [VIP]\n",
                "10.96.0.10:53/UDP   0.0.0.0:0 (2) (0) [ClusterIP, Local]\n",
                "                    10.244.1.42:53/UDP (2) (1)\n",
            )
        );
    }

    #[test]
    fn lb_list_prints_ipv6_entries_after_ipv4_ones_in_brackets() {
        let row = |frontend: &str, slot, backend: &str, flags: &[&str]| LbRow {
            frontend: frontend.into(),
            slot,
            rev_nat: 3,
            backend: backend.into(),
            backend_id: u32::from(slot) + 6,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        };
        let entries = [
            row("10.96.229.67:80/TCP", 0, "0.0.0.0:0", &["ClusterIP"]),
            row("[fd00:96::e5:43]:80/TCP", 0, "[::]:0", &["ClusterIP"]),
            row(
                "[fd00:96::e5:43]:80/TCP",
                1,
                "[fd00:10:112:1::c2]:80/TCP",
                &[],
            ),
        ];
        assert_eq!(
            lb_table(&entries),
            concat!(
                "SERVICE ADDRESS           BACKEND ADDRESS (REVNAT_ID) (SLOT)\n",
                "10.96.229.67:80/TCP       0.0.0.0:0 (3) (0) [ClusterIP]\n",
                "[fd00:96::e5:43]:80/TCP   [::]:0 (3) (0) [ClusterIP]\n",
                "                          [fd00:10:112:1::c2]:80/TCP (3) (1)\n",
            )
        );
    }
}
