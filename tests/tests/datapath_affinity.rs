//! ClientIP session affinity (`affinity.rs`) through the real entry points
//! (`BPF_PROG_TEST_RUN`): a client's new connections stick to one backend while its entry is
//! younger than the timeout and its backend is active; otherwise the choice is made afresh.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;

use lb_common::{drop::Hook, service::AffinityValue};
use lb_testkit::packet::*;
use lb_tests::fixture::{Datapath, ServiceExt as _, monotonic_ns, service};

const VIP: &str = "10.96.0.10:80/TCP";
const BACKENDS: [&str; 4] = [
    "10.244.1.5:8080",
    "10.244.1.6:8080",
    "10.244.1.7:8080",
    "10.244.1.8:8080",
];
const CLIENT: &str = "10.244.0.7";

/// The backend a SYN from `client:port` to the VIP was DNATed to.
fn backend_of_new_connection(datapath: &Datapath, client: &str, port: u16) -> SocketAddrV4 {
    let run = datapath.run(
        Hook::FromPod,
        &tcp_syn(&format!("{client}:{port}"), "10.96.0.10:80"),
    );
    read_checked(&run.frame).dst
}

/// A datapath serving the VIP on every backend, with affinity when `timeout_secs` is given.
fn datapath_with(timeout_secs: Option<u32>) -> Datapath {
    let mut datapath = Datapath::load();
    let web = service(VIP, &BACKENDS);
    datapath.sync(&[match timeout_secs {
        Some(timeout) => web.affinity(timeout),
        None => web,
    }]);
    datapath
}

#[test]
fn every_new_connection_of_a_client_goes_to_the_same_backend() {
    let datapath = datapath_with(Some(10_800));
    let chosen: BTreeSet<_> = (0..20)
        .map(|i| backend_of_new_connection(&datapath, CLIENT, 40_000 + i))
        .collect();
    assert_eq!(chosen.len(), 1, "one client, one backend: {chosen:?}");

    // Other clients are spread as without affinity (all 30 on one of 4 backends: 4^-29).
    let spread: BTreeSet<_> = (0..30)
        .map(|i| backend_of_new_connection(&datapath, &format!("10.244.2.{}", i + 1), 40_000))
        .collect();
    assert!(spread.len() > 1, "clients are spread: {spread:?}");

    // Without affinity, one client's connections are spread too.
    let datapath = datapath_with(None);
    let unsticky: BTreeSet<_> = (0..30)
        .map(|i| backend_of_new_connection(&datapath, CLIENT, 40_000 + i))
        .collect();
    assert!(unsticky.len() > 1, "no affinity: {unsticky:?}");
    assert!(datapath.affinity().is_empty(), "no affinity, no entries");
}

#[test]
fn an_entry_older_than_the_timeout_binds_nothing_and_a_younger_one_does() {
    let timeout_secs = 1;
    let mut datapath = datapath_with(Some(timeout_secs));
    backend_of_new_connection(&datapath, CLIENT, 40_000);
    let [(key, first)] = datapath.affinity()[..] else {
        panic!("one entry: {:?}", datapath.affinity());
    };
    let pinned = first.backend_id;
    let pinned_addr = addr(
        BACKENDS
            .iter()
            .find(|b| datapath.backend_id(b) == Some(pinned))
            .expect("the entry names a backend"),
    );

    // Younger than the timeout: honoured, and refreshed by each new connection.
    for port in 41_000..41_010 {
        datapath.remember_affinity(
            key,
            AffinityValue {
                last_used_ns: monotonic_ns(),
                backend_id: pinned,
                _pad: 0,
            },
        );
        assert_eq!(
            backend_of_new_connection(&datapath, CLIENT, port),
            pinned_addr
        );
        assert!(
            datapath.affinity()[0].1.last_used_ns > first.last_used_ns,
            "refreshed"
        );
    }

    // Older than the timeout: chosen afresh (all 20 on the old backend again: 4^-20).
    let stale = monotonic_ns() - 2 * u64::from(timeout_secs) * 1_000_000_000;
    let chosen: BTreeSet<_> = (42_000..42_020)
        .map(|port| {
            datapath.remember_affinity(
                key,
                AffinityValue {
                    last_used_ns: stale,
                    backend_id: pinned,
                    _pad: 0,
                },
            );
            backend_of_new_connection(&datapath, CLIENT, port)
        })
        .collect();
    assert!(
        chosen.iter().any(|b| *b != pinned_addr),
        "expired entry still binds: {chosen:?}"
    );
}

#[test]
fn a_remembered_backend_that_is_terminating_is_not_chosen_again() {
    let mut datapath = datapath_with(Some(10_800));
    let first = backend_of_new_connection(&datapath, CLIENT, 40_000);
    let others: Vec<&str> = BACKENDS
        .iter()
        .copied()
        .filter(|b| addr(b) != first)
        .collect();
    let first_text = first.to_string();
    datapath.sync(&[service(VIP, &others)
        .terminating(&[first_text.as_str()])
        .affinity(10_800)]);
    let chosen: BTreeSet<_> = (0..20)
        .map(|i| backend_of_new_connection(&datapath, CLIENT, 41_000 + i))
        .collect();
    assert!(
        !chosen.contains(&first),
        "terminating backend chosen: {chosen:?}"
    );
    assert_eq!(chosen.len(), 1, "and the new choice sticks: {chosen:?}");
}
