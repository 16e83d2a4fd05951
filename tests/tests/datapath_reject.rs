//! A new flow to a Service without endpoints is refused as kube-proxy refuses it
//! (k8s-semantics.md §2.6, cases 24 and 29): ICMP port unreachable from the VIP, back where the
//! packet came from, counted as 158; with `service-no-backend-response=drop`, or when endpoints
//! exist but none may serve this frontend (a traffic policy Local), it is dropped.

use lb_common::{
    config::{CONFIG_F_NO_BACKEND_DROP, DatapathConfig, EVENTS_PER_SEC},
    drop::{DropReason, Hook},
};
use lb_testkit::packet::*;
use lb_tests::fixture::{Datapath, TC_ACT_REDIRECT, TC_ACT_SHOT, service};

const POD: &str = "10.244.0.7:40000";

/// A datapath with one frontend and no backend; `has_any_endpoints` as the model would say.
fn empty(frontend: &str, has_any_endpoints: bool, config_flags: u32) -> Datapath {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: config_flags,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    let mut web = service(frontend, &[]);
    web.has_any_endpoints = has_any_endpoints;
    datapath.sync(&[web]);
    datapath
}

#[test]
fn a_service_without_endpoints_answers_port_unreachable_from_the_vip() {
    for (frontend, input) in [
        ("10.96.0.10:80/TCP", tcp_syn(POD, "10.96.0.10:80")),
        ("10.96.0.10:53/UDP", udp(POD, "10.96.0.10:53")),
    ] {
        let datapath = empty(frontend, false, 0);
        let run = datapath.run(Hook::FromPod, &input);
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "{frontend}: answered");
        let seen = read_icmp_error_checked(&run.frame);
        assert_eq!(seen.src, ip("10.96.0.10"), "{frontend}: from the VIP");
        assert_eq!(seen.dst, ip("10.244.0.7"), "{frontend}: to the client");
        assert_eq!(seen.kind, (3, 3), "{frontend}: port unreachable");
        assert_eq!(seen.quoted_src, addr(POD), "{frontend}: quotes the packet");
        assert_eq!(
            &run.frame[..6],
            &input[6..12],
            "{frontend}: back to the MAC it came from"
        );
        assert_eq!(
            datapath.drop_count(DropReason::NoService, Hook::FromPod),
            1,
            "{frontend}: counted"
        );
        assert!(datapath.conntrack().is_empty(), "{frontend}: no state");
    }
}

#[test]
fn drop_mode_and_a_local_policy_without_local_endpoints_drop_silently() {
    for (name, has_any_endpoints, config_flags) in [
        (
            "service-no-backend-response=drop",
            false,
            CONFIG_F_NO_BACKEND_DROP,
        ),
        ("endpoints exist, none serves this frontend", true, 0),
    ] {
        let datapath = empty("10.96.0.10:80/TCP", has_any_endpoints, config_flags);
        let input = tcp_syn(POD, "10.96.0.10:80");
        let run = datapath.run(Hook::FromPod, &input);
        assert_eq!(run.verdict, TC_ACT_SHOT, "{name}: dropped");
        assert_eq!(run.frame, input, "{name}: not answered");
        assert_eq!(
            datapath.drop_count(DropReason::NoService, Hook::FromPod),
            1,
            "{name}: counted"
        );
    }
}
