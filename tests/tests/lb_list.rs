//! `lbctl bpf lb list` and `lbctl service list` read both families' services maps from a
//! loaded datapath: the IPv4 maps as sync programs them, the IPv6 maps (`LB6_SERVICES`,
//! `LB6_BACKENDS`) from their pins, written here from userspace as the IPv6 sync will.

use aya::maps::{HashMap, Map, MapData};
use lb_agent::api::rows;
use lb_agent::datapath::{
    LbMaps as _, dump,
    maps::{BackendId, ServiceId, master_entry, slot_entry},
};
use lb_common::{
    addr6_from_octets, maps as names, proto,
    service::{Backend6, ServiceEntry, ServiceKey6},
};
use lb_tests::fixture::{Datapath, service};

fn addr6(text: &str) -> lb_common::Addr6 {
    addr6_from_octets(text.parse::<std::net::Ipv6Addr>().expect("ipv6").octets())
}

fn pinned<K: aya::Pod, V: aya::Pod>(datapath: &Datapath, name: &str) -> HashMap<MapData, K, V> {
    let data = MapData::from_pin(datapath.pin_dir().join(name))
        .unwrap_or_else(|err| panic!("open the pin of {name}: {err}"));
    HashMap::try_from(Map::HashMap(data)).unwrap_or_else(|err| panic!("{name} type: {err}"))
}

#[test]
fn both_families_entries_are_listed_from_the_kernel_maps_ipv6_in_brackets() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service("10.96.229.67:80/TCP", &["10.112.1.194:80"])]);

    // Nothing in the IPv6 maps yet: nothing listed for them.
    assert_eq!(
        dump::read_v6(datapath.pin_dir()).expect("read the IPv6 maps"),
        dump::V6Content::default()
    );

    let vip = addr6("fd00:96::e5:43");
    let key = |slot| ServiceKey6::new(vip, 80u16.to_be(), proto::TCP, slot);
    let mut services: HashMap<MapData, ServiceKey6, ServiceEntry> =
        pinned(&datapath, names::LB6_SERVICES);
    services
        .insert(key(0), master_entry(ServiceId(7), 1, 0, 0, 0, None), 0)
        .expect("write the master entry");
    services
        .insert(key(1), slot_entry(BackendId(9)), 0)
        .expect("write slot 1");
    let mut backends: HashMap<MapData, u32, Backend6> = pinned(&datapath, names::LB6_BACKENDS);
    backends
        .insert(
            9,
            Backend6 {
                addr: addr6("fd00:10:112:1::c2"),
                port: 80u16.to_be(),
                proto: proto::TCP,
                ..Backend6::default()
            },
            0,
        )
        .expect("write the backend");

    let v4 = datapath.behind_sync(|maps| maps.read().expect("read the IPv4 maps"));
    let v6 = rows::v6_content(Some(datapath.pin_dir()));
    let lb: Vec<String> = rows::lb_rows(&v4, &v6)
        .iter()
        .map(|row| {
            format!(
                "{} {} ({}) ({}) {:?}",
                row.frontend, row.backend, row.rev_nat, row.slot, row.flags
            )
        })
        .collect();
    let id4 = rows::service_rows(&v4, &v6, |_| None)[0].id;
    assert_eq!(
        lb,
        [
            "10.96.229.67 0.0.0.0:0 (0) (0) [\"VIP\"]".to_owned(),
            format!("10.96.229.67:80/TCP 0.0.0.0:0 ({id4}) (0) [\"ClusterIP\"]"),
            format!("10.96.229.67:80/TCP 10.112.1.194:80/TCP ({id4}) (1) []"),
            "[fd00:96::e5:43]:80/TCP [::]:0 (7) (0) [\"ClusterIP\"]".to_owned(),
            "[fd00:96::e5:43]:80/TCP [fd00:10:112:1::c2]:80/TCP (7) (1) []".to_owned(),
        ]
    );

    let services: Vec<String> = rows::service_rows(&v4, &v6, |_| None)
        .iter()
        .map(|row| {
            let backends: Vec<&str> = row.backends.iter().map(|b| b.address.as_str()).collect();
            format!("{} {} {backends:?}", row.id, row.frontend)
        })
        .collect();
    assert_eq!(
        services,
        [
            format!("{id4} 10.96.229.67:80/TCP [\"10.112.1.194:80/TCP\"]"),
            "7 [fd00:96::e5:43]:80/TCP [\"[fd00:10:112:1::c2]:80/TCP\"]".to_owned(),
        ]
    );
}
