//! The verifier accepts every program: the compiler accepts code (a reachable panic, an
//! unbounded access) that the kernel then refuses to load.

use lb_tests::fixture::Datapath;

#[test]
fn every_program_passes_the_verifier_and_pins_its_maps() {
    let mut datapath = Datapath::load();
    datapath.load_socket_programs();
    use lb_common::maps::*;
    let names = [
        LB4_SERVICES,
        LB4_BACKENDS,
        LB4_REVNAT,
        LB4_FRAGS,
        LB4_AFFINITY,
        LB4_CT_TCP,
        LB4_CT_ANY,
        LB_CONFIG,
        LB_METRICS,
        LB_EVENTS,
        LB_EVENT_LIMIT,
        LB4_REVERSE_SK,
        LB6_REVERSE_SK,
        LB_HOST_NETNS,
        LB_GENERATION,
    ];
    for name in names {
        assert!(
            datapath.pin_dir().join(name).exists(),
            "map {name} is not pinned"
        );
    }
}
