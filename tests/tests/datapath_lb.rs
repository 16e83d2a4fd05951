//! Frontend lookup, backend selection and DNAT through the real entry points
//! (`BPF_PROG_TEST_RUN`): what lb translates, what it hands on untouched, and what it drops.

use std::collections::BTreeSet;

use lb_common::{
    config::CONFIG_F_EXTERNAL_CLUSTER_IP,
    drop::{DropReason, Hook},
};
use lb_testkit::packet::*;
use lb_tests::fixture::{Case, Datapath, Expect, ServiceExt as _, TC_ACT_UNSPEC, check, service};

const VIP_TCP: &str = "10.96.0.10:80/TCP";
const VIP_UDP: &str = "10.96.0.10:53/UDP";
const POD: &str = "10.244.0.7:40000";
const BACKEND: &str = "10.244.1.5:8080";

fn cases() -> Vec<Case> {
    let web = || vec![service(VIP_TCP, &[BACKEND])];
    let dns = || vec![service(VIP_UDP, &["10.244.1.5:5353"])];
    vec![
        Case {
            name: "a non-IPv4 frame passes byte for byte",
            services: web(),
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: arp_request(),
            expect: Expect::Unchanged,
        },
        Case {
            name: "TCP to an address that is no VIP passes byte for byte",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: tcp_syn(POD, "10.96.0.99:80"),
            expect: Expect::Unchanged,
        },
        Case {
            name: "pod to ClusterIP over TCP is DNATed to the backend",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: tcp_syn(POD, "10.96.0.10:80"),
            expect: Expect::Rewritten(tcp_syn(POD, BACKEND)),
        },
        Case {
            name: "pod to ClusterIP over UDP is DNATed to the backend",
            services: dns(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: udp(POD, "10.96.0.10:53"),
            expect: Expect::Rewritten(udp(POD, "10.244.1.5:5353")),
        },
        Case {
            name: "a UDP checksum of 0 stays 0 through DNAT",
            services: dns(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: udp_without_checksum(POD, "10.96.0.10:53"),
            expect: Expect::Rewritten(udp_without_checksum(POD, "10.244.1.5:5353")),
        },
        Case {
            name: "a SYN with IP options is DNATed past the options",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: tcp_syn_with_ip_options(POD, "10.96.0.10:80"),
            expect: Expect::Rewritten(tcp_syn_with_ip_options(POD, BACKEND)),
        },
        Case {
            // To a VIP it is answered or dropped: datapath_icmp.rs.
            name: "ICMP to an address that is no VIP passes untouched",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: icmp_echo("10.244.0.7", "10.244.1.5"),
            expect: Expect::Unchanged,
        },
        Case {
            // Endpoints elsewhere, none for this frontend (a traffic policy Local); a Service
            // without any endpoint is refused instead (datapath_reject.rs).
            name: "a frontend with no backends drops with 158",
            services: vec![{
                let mut web = service(VIP_TCP, &[]);
                web.has_any_endpoints = true;
                web
            }],
            config_flags: 0,
            hook: Hook::FromPod,
            input: tcp_syn(POD, "10.96.0.10:80"),
            expect: Expect::Dropped(DropReason::NoService),
        },
        Case {
            name: "a VIP on a port that is no frontend drops with 158",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: tcp_syn(POD, "10.96.0.10:81"),
            expect: Expect::Dropped(DropReason::NoService),
        },
        Case {
            name: "a VIP over a protocol that is no frontend drops with 158",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: udp(POD, "10.96.0.10:80"),
            expect: Expect::Dropped(DropReason::NoService),
        },
        // First fragments are translated: tests/tests/datapath_frag.rs.
        Case {
            name: "a later fragment to a VIP whose first was not seen drops with 175",
            services: dns(),
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: udp_later_fragment("192.168.56.10:5000", "10.96.0.10:53"),
            expect: Expect::Dropped(DropReason::FragNotFound),
        },
        Case {
            name: "a fragment to an address that is no VIP passes",
            services: dns(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: udp_later_fragment(POD, "10.244.3.3:53"),
            expect: Expect::Unchanged,
        },
        Case {
            name: "a truncated TCP header to a VIP drops with 134",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            // Ethernet 14 + IPv4 20 + 10 of the 20 TCP header bytes.
            input: truncated(tcp_syn(POD, "10.96.0.10:80"), 44),
            expect: Expect::Dropped(DropReason::Invalid),
        },
        Case {
            name: "a truncated UDP header to a VIP drops with 134",
            services: dns(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: truncated(udp(POD, "10.96.0.10:53"), 38),
            expect: Expect::Dropped(DropReason::Invalid),
        },
        Case {
            name: "a truncated header to an address that is no VIP passes",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: truncated(tcp_syn(POD, "10.244.3.3:80"), 44),
            expect: Expect::Unchanged,
        },
        Case {
            // A truncated IPv4 header cannot be tested here: BPF_PROG_TEST_RUN itself refuses
            // an IPv4 frame shorter than an IPv4 header (EINVAL).
            name: "an IPv4 header with IHL below 5 passes",
            services: web(),
            config_flags: 0,
            hook: Hook::FromPod,
            input: with_byte(tcp_syn(POD, "10.96.0.10:80"), 14, 0x44),
            expect: Expect::Unchanged,
        },
        Case {
            name: "an external client reaches a ClusterIP when the flag is on",
            services: web(),
            config_flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
            hook: Hook::FromNetdev,
            input: tcp_syn("192.168.56.10:33802", "10.96.0.10:80"),
            expect: Expect::Rewritten(tcp_syn("192.168.56.10:33802", BACKEND)),
        },
    ]
}

#[test]
fn every_case_of_the_frontend_table_holds() {
    for case in cases() {
        check(&case);
    }
}

#[test]
fn new_flows_spread_over_every_active_backend_and_never_over_terminating_ones() {
    let mut datapath = Datapath::load();
    datapath
        .sync(&[service(VIP_TCP, &["10.244.1.5:8080", "10.244.2.6:8080"])
            .terminating(&["10.244.3.7:8080"])]);
    let mut seen = BTreeSet::new();
    for port in 40_000..40_200u16 {
        let run = datapath.run(
            Hook::FromPod,
            &tcp_syn(&format!("10.244.0.7:{port}"), "10.96.0.10:80"),
        );
        assert_eq!(run.verdict, TC_ACT_UNSPEC);
        seen.insert(read_checked(&run.frame).dst.to_string());
    }
    let want: BTreeSet<String> = ["10.244.1.5:8080", "10.244.2.6:8080"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    // 200 flows over 2 backends: the chance that one is never picked is 2^-199.
    assert_eq!(seen, want);
}
