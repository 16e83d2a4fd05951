//! The one place where what the agent knows of its maps becomes the rows `lbctl` prints:
//! `datapath::dump`'s views of the services maps of both families (`MapsContent` holds
//! `LB4_*` and `LB6_*` alike) become `lb_api::proto` rows. The addresses in the views are
//! already text (`10.96.0.10:53/UDP`, `[fd00::1]:80/TCP`); a new source of rows adds its views
//! here. The conntrack entries of both families become `CtRow`s here too.
use crate::api::proto::{BackendRow, CtRow, LbRow, ServiceRow};
use crate::datapath::conntrack::{CtItem, CtItem6};
use crate::datapath::dump::{self, LbEntryView, ServiceView};
use crate::datapath::{MapsContent, maps::ServiceId};

/// The rows of `lbctl bpf ct list`: the IPv4 entries (`tcp`, `any`), then the IPv6 ones
/// (`tcp6`, `any6`), each in the order read, with expiries counted from `now` (the datapath's
/// clock).
pub fn ct_rows(items: &[CtItem], items6: &[CtItem6], now: u32) -> Vec<CtRow> {
    let v4 = items
        .iter()
        .map(|item| CtRow::new(item.map.label(), &item.key, &item.entry, now));
    let v6 = items6
        .iter()
        .map(|item| CtRow::new(item.map.label6(), &item.key, &item.entry, now));
    v4.chain(v6).collect()
}

/// Every frontend of both families, each with the Service's `namespace/name` that `name_of`
/// knows for its frontend text (empty when it knows none), by id.
pub fn service_rows(
    content: &MapsContent,
    name_of: impl Fn(&str) -> Option<String>,
) -> Vec<ServiceRow> {
    dump::services(content)
        .into_iter()
        .map(|view| service_row(view, &name_of))
        .collect()
}

fn service_row(view: ServiceView, name_of: &impl Fn(&str) -> Option<String>) -> ServiceRow {
    let ServiceView {
        id: ServiceId(id),
        frontend,
        kind,
        flags,
        backends,
    } = view;
    ServiceRow {
        id,
        name: name_of(&frontend).unwrap_or_default(),
        frontend,
        service_type: kind.to_owned(),
        flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        backends: backends
            .into_iter()
            .map(|backend| BackendRow {
                id: backend.id.0,
                address: backend.address,
                state: backend.state.into(),
            })
            .collect(),
    }
}

/// Every entry of both services maps, by frontend then slot.
pub fn lb_rows(content: &MapsContent) -> Vec<LbRow> {
    dump::lb_entries(content).into_iter().map(lb_row).collect()
}

fn lb_row(view: LbEntryView) -> LbRow {
    LbRow {
        frontend: view.frontend,
        slot: view.slot,
        rev_nat: view.rev_nat.0,
        backend: view.backend,
        backend_id: view.backend_id.0,
        flags: view.flags.iter().map(|f| (*f).to_owned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{
        addr6_from_octets, proto,
        service::{Backend4, Backend6, ServiceKey4, ServiceKey6},
    };

    use super::*;
    use crate::datapath::maps::{BackendId, master_entry, slot_entry};

    /// nginx dual-stack: service 1 on 10.96.229.67:80, service 2 on [fd00:96::e5:43]:80, one
    /// backend each.
    fn dual_stack() -> MapsContent {
        let mut content = MapsContent::default();
        let key4 = |slot| {
            ServiceKey4::new(
                u32::from_ne_bytes([10, 96, 229, 67]),
                80u16.to_be(),
                proto::TCP,
                slot,
            )
        };
        content
            .services
            .insert(key4(0).into(), master_entry(ServiceId(1), 1, 0, 0, 0, None));
        content
            .services
            .insert(key4(1).into(), slot_entry(BackendId(1)));
        content.backends.insert(
            BackendId(1),
            Backend4 {
                addr: u32::from_ne_bytes([10, 112, 1, 194]),
                port: 80u16.to_be(),
                proto: proto::TCP,
                ..Backend4::default()
            }
            .into(),
        );
        let addr6 = |text: &str| {
            addr6_from_octets(text.parse::<std::net::Ipv6Addr>().expect("ipv6").octets())
        };
        let key6 =
            |slot| ServiceKey6::new(addr6("fd00:96::e5:43"), 80u16.to_be(), proto::TCP, slot);
        content
            .services
            .insert(key6(0).into(), master_entry(ServiceId(2), 1, 0, 0, 0, None));
        content
            .services
            .insert(key6(1).into(), slot_entry(BackendId(2)));
        content.backends.insert(
            BackendId(2),
            Backend6 {
                addr: addr6("fd00:10:112:1::c2"),
                port: 80u16.to_be(),
                proto: proto::TCP,
                ..Backend6::default()
            }
            .into(),
        );
        content
    }

    #[test]
    fn service_rows_hold_both_families_with_their_names() {
        let content = dual_stack();
        let rows = service_rows(&content, |frontend| {
            frontend
                .ends_with(":80/TCP")
                .then(|| "default/nginx".to_owned())
        });
        let text: Vec<String> = rows
            .iter()
            .map(|row| {
                format!(
                    "{} {} {} {} => {}",
                    row.id, row.frontend, row.name, row.backends[0].id, row.backends[0].address
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                "1 10.96.229.67:80/TCP default/nginx 1 => 10.112.1.194:80/TCP",
                "2 [fd00:96::e5:43]:80/TCP default/nginx 2 => [fd00:10:112:1::c2]:80/TCP",
            ]
        );
    }

    #[test]
    fn lb_rows_list_the_ipv4_map_then_the_ipv6_map() {
        let content = dual_stack();
        let rows: Vec<String> = lb_rows(&content)
            .iter()
            .map(|row| {
                format!(
                    "{} {} ({}) ({})",
                    row.frontend, row.backend, row.rev_nat, row.slot
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                "10.96.229.67:80/TCP 0.0.0.0:0 (1) (0)",
                "10.96.229.67:80/TCP 10.112.1.194:80/TCP (1) (1)",
                "[fd00:96::e5:43]:80/TCP [::]:0 (2) (0)",
                "[fd00:96::e5:43]:80/TCP [fd00:10:112:1::c2]:80/TCP (2) (1)",
            ]
        );
    }

    #[test]
    fn ct_rows_list_the_ipv4_maps_then_the_ipv6_maps() {
        use lb_common::conntrack::{
            CT_REPLY, CT_SERVICE, CtEntry, CtEntry6, CtKey4, CtKey6, CtReply6, CtService,
        };

        use crate::datapath::conntrack::CtMap;
        let addr6 = |text: &str| {
            addr6_from_octets(text.parse::<std::net::Ipv6Addr>().expect("ipv6").octets())
        };
        let key4 = CtKey4 {
            saddr: u32::from_ne_bytes([10, 244, 0, 7]),
            daddr: u32::from_ne_bytes([10, 96, 0, 10]),
            sport: 40000u16.to_be(),
            dport: 53u16.to_be(),
            proto: proto::UDP,
            _pad: 0,
            _pad2: 0,
        };
        let service4 = CtService {
            expires: 160,
            kind: CT_SERVICE,
            rev_nat: 1,
            backend_id: 1,
            ..CtService::default()
        };
        let key6 = CtKey6 {
            saddr: addr6("fd00:10:112:1::c2"),
            daddr: addr6("fd00:244::7"),
            sport: 80u16.to_be(),
            dport: 40000u16.to_be(),
            proto: proto::TCP,
            _pad: 0,
            _pad2: 0,
        };
        let reply6 = CtReply6 {
            expires: 130,
            kind: CT_REPLY,
            rev_nat: 2,
            backend_id: 2,
            vip: addr6("fd00:96::e5:43"),
            vip_port: 80u16.to_be(),
            client_addr: addr6("fd00:244::7"),
            client_port: 40000u16.to_be(),
            ..CtReply6::default()
        };
        let rows = ct_rows(
            &[CtItem {
                map: CtMap::Any,
                key: key4,
                entry: CtEntry::from(service4),
            }],
            &[CtItem6 {
                map: CtMap::Tcp,
                key: key6,
                entry: CtEntry6::from(reply6),
            }],
            100,
        );
        let text: Vec<String> = rows
            .iter()
            .map(|row| {
                format!(
                    "{} {} {} {} -> {} {} {:?} {:?}",
                    row.map,
                    row.proto,
                    row.direction,
                    row.source,
                    row.destination,
                    row.expires_in,
                    row.vip,
                    row.client
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                "any UDP service 10.244.0.7:40000 -> 10.96.0.10:53 60 None None",
                "tcp6 TCP reply [fd00:10:112:1::c2]:80 -> [fd00:244::7]:40000 30 \
                 Some(\"[fd00:96::e5:43]:80\") Some(\"[fd00:244::7]:40000\")",
            ]
        );
    }
}
