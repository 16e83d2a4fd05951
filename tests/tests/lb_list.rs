//! `lbctl bpf lb list` and `lbctl service list` read both families' services maps from a
//! loaded datapath, as sync programs them: IPv4 entries as before, IPv6 ones (`LB6_SERVICES`,
//! `LB6_BACKENDS`) in brackets.

use lb_agent::api::rows;
use lb_agent::datapath::LbMaps as _;
use lb_tests::fixture::{Datapath, service};

#[test]
fn both_families_entries_are_listed_from_the_kernel_maps_ipv6_in_brackets() {
    let mut datapath = Datapath::load();
    datapath.sync(&[
        service("10.96.229.67:80/TCP", &["10.112.1.194:80"]),
        service("[fd00:96::e5:43]:80/TCP", &["[fd00:10:112:1::c2]:80"]),
    ]);

    let content = datapath.behind_sync(|maps| maps.read().expect("read the maps"));
    let services = rows::service_rows(&content, |_| None);
    let id = |frontend: &str| {
        services
            .iter()
            .find(|row| row.frontend == frontend)
            .unwrap_or_else(|| panic!("{frontend} listed"))
            .id
    };
    let (id4, id6) = (id("10.96.229.67:80/TCP"), id("[fd00:96::e5:43]:80/TCP"));
    assert_ne!(id4, id6, "one id space for both families");

    let lb: Vec<String> = rows::lb_rows(&content)
        .iter()
        .map(|row| {
            format!(
                "{} {} ({}) ({}) {:?}",
                row.frontend, row.backend, row.rev_nat, row.slot, row.flags
            )
        })
        .collect();
    for expected in [
        format!("10.96.229.67:80/TCP 0.0.0.0:0 ({id4}) (0) [\"ClusterIP\"]"),
        format!("10.96.229.67:80/TCP 10.112.1.194:80/TCP ({id4}) (1) []"),
        format!("[fd00:96::e5:43]:80/TCP [::]:0 ({id6}) (0) [\"ClusterIP\"]"),
        format!("[fd00:96::e5:43]:80/TCP [fd00:10:112:1::c2]:80/TCP ({id6}) (1) []"),
    ] {
        assert!(lb.contains(&expected), "{expected} not in {lb:#?}");
    }

    let listed: Vec<String> = services
        .iter()
        .map(|row| {
            let backends: Vec<&str> = row.backends.iter().map(|b| b.address.as_str()).collect();
            format!("{} {} {backends:?}", row.id, row.frontend)
        })
        .collect();
    assert!(listed.contains(&format!(
        "{id4} 10.96.229.67:80/TCP [\"10.112.1.194:80/TCP\"]"
    )));
    assert!(listed.contains(&format!(
        "{id6} [fd00:96::e5:43]:80/TCP [\"[fd00:10:112:1::c2]:80/TCP\"]"
    )));
}
