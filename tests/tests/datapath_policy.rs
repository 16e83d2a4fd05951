//! The external-access policies (`policy.rs`): from-netdev refuses a ClusterIP that is not
//! routable with 174 before any conntrack entry exists, unless `bpf-lb-external-clusterip` is
//! on, and a load balancer's client outside its `loadBalancerSourceRanges` with 177; from-pod
//! applies neither.

use lb_agent::model::FrontendKind;
use lb_common::{
    config::{CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig, EVENTS_PER_SEC},
    drop::{DropReason, Hook, SourceFile},
    event::{EVENT_DROP, tcp_flags},
    proto,
};
use lb_testkit::packet::*;
use lb_tests::fixture::{
    Case, Datapath, Expect, ServiceExt, TC_ACT_SHOT, TC_ACT_UNSPEC, check, service,
};

const CLIENT: &str = "192.168.56.10:33802";
const BACKEND: &str = "10.244.1.5:8080";

#[test]
fn external_client_to_cluster_ip_is_dropped_with_174_when_flag_is_off() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service("10.96.0.10:80/TCP", &[BACKEND])]);
    let input = tcp_syn(CLIENT, "10.96.0.10:80");
    let run = datapath.run(Hook::FromNetdev, &input);

    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.drop_count(DropReason::IsClusterIp, Hook::FromNetdev),
        1
    );
    assert_eq!(
        datapath.conntrack(),
        vec![],
        "no conntrack entry may exist for a refused flow"
    );
    let events = datapath.drain_events();
    assert_eq!(events.len(), 1);
    let event = events[0];
    assert_eq!(event.kind, EVENT_DROP);
    assert_eq!(event.reason, 174);
    assert_eq!(event.file, SourceFile::Policy as u8);
    assert!(event.line > 0, "the drop site's line is recorded");
    assert_eq!(event.hook, Hook::FromNetdev as u8);
    assert_eq!(event.proto, proto::TCP);
    assert_eq!(event.tcp_flags, tcp_flags::SYN);
    assert_eq!(event.saddr, ip_be(ip("192.168.56.10")));
    assert_eq!(event.daddr, ip_be(ip("10.96.0.10")));
    assert_eq!(event.sport, port_be(33802));
    assert_eq!(event.dport, port_be(80));
    assert_eq!(event.len as usize, input.len());
    // BPF_PROG_TEST_RUN runs on the loopback device (ifindex 1).
    assert_eq!(event.ifindex, 1);
}

#[test]
fn external_client_to_cluster_ip_is_dnated_when_flag_is_on() {
    check(&Case {
        name: "external client to ClusterIP, flag on",
        services: vec![service("10.96.0.10:80/TCP", &[BACKEND])],
        config_flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        hook: Hook::FromNetdev,
        input: tcp_syn(CLIENT, "10.96.0.10:80"),
        expect: Expect::Rewritten(tcp_syn(CLIENT, BACKEND)),
    });
}

#[test]
fn external_clients_reach_node_ports_external_and_load_balancer_ips_with_the_flag_off() {
    for kind in [
        FrontendKind::NodePort,
        FrontendKind::ExternalIp,
        FrontendKind::LoadBalancer,
    ] {
        check(&Case {
            name: kind.as_str(),
            services: vec![service("192.0.2.10:80/TCP", &[BACKEND]).kind(kind)],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: tcp_syn(CLIENT, "192.0.2.10:80"),
            expect: Expect::Rewritten(tcp_syn(CLIENT, BACKEND)),
        });
    }
}

#[test]
fn from_pod_ignores_the_policy() {
    check(&Case {
        name: "pod to ClusterIP, flag off",
        services: vec![service("10.96.0.10:80/TCP", &[BACKEND])],
        config_flags: 0,
        hook: Hook::FromPod,
        input: tcp_syn("10.244.0.7:40000", "10.96.0.10:80"),
        expect: Expect::Rewritten(tcp_syn("10.244.0.7:40000", BACKEND)),
    });
}

#[test]
fn turning_the_flag_on_takes_effect_on_the_next_packet() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service("10.96.0.10:80/TCP", &[BACKEND])]);
    let input = tcp_syn(CLIENT, "10.96.0.10:80");
    assert_eq!(datapath.run(Hook::FromNetdev, &input).verdict, TC_ACT_SHOT);
    datapath.set_config(DatapathConfig {
        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    let run = datapath.run(Hook::FromNetdev, &input);
    assert_eq!(run.frame, tcp_syn(CLIENT, BACKEND));
}

#[test]
fn drop_events_are_rate_limited_but_every_drop_is_counted() {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        events_per_sec: 5,
        ..DatapathConfig::default()
    });
    datapath.sync(&[service("10.96.0.10:80/TCP", &[BACKEND])]);
    let input = tcp_syn(CLIENT, "10.96.0.10:80");
    for _ in 0..50 {
        assert_eq!(datapath.run(Hook::FromNetdev, &input).verdict, TC_ACT_SHOT);
    }
    assert_eq!(
        datapath.drop_count(DropReason::IsClusterIp, Hook::FromNetdev),
        50
    );
    let events = datapath.drain_events().len();
    // A burst of at most one second's worth (5) per CPU; the runs may land on either CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        (1..=5 * cpus + 1).contains(&events),
        "{events} events for 50 drops"
    );
}

/// A load-balancer frontend of a Service with `loadBalancerSourceRanges`.
fn load_balancer(frontend: &str, ranges: &[&str]) -> lb_agent::model::DesiredService {
    service(frontend, &[BACKEND])
        .kind(FrontendKind::LoadBalancer)
        .source_ranges(ranges)
}

#[test]
fn load_balancer_source_ranges_admit_listed_clients_and_drop_others_with_177() {
    let cases = [
        Case {
            name: "client inside a range",
            services: vec![load_balancer(
                "203.0.113.10:80/TCP",
                &["10.0.0.0/8", "192.168.56.0/24"],
            )],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: tcp_syn(CLIENT, "203.0.113.10:80"),
            expect: Expect::Rewritten(tcp_syn(CLIENT, BACKEND)),
        },
        Case {
            name: "client is exactly a /32 range",
            services: vec![load_balancer("203.0.113.10:80/TCP", &["192.168.56.10/32"])],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: tcp_syn(CLIENT, "203.0.113.10:80"),
            expect: Expect::Rewritten(tcp_syn(CLIENT, BACKEND)),
        },
        Case {
            name: "0.0.0.0/0 admits everyone",
            services: vec![load_balancer("203.0.113.10:80/TCP", &["0.0.0.0/0"])],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: tcp_syn(CLIENT, "203.0.113.10:80"),
            expect: Expect::Rewritten(tcp_syn(CLIENT, BACKEND)),
        },
        Case {
            name: "client outside every range",
            services: vec![load_balancer(
                "203.0.113.10:80/TCP",
                &["10.0.0.0/8", "192.168.57.0/24", "192.168.56.11/32"],
            )],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: tcp_syn(CLIENT, "203.0.113.10:80"),
            expect: Expect::Dropped(DropReason::NotInSrcRange),
        },
        Case {
            name: "ranges listed but none usable: nobody from outside",
            services: vec![load_balancer("203.0.113.10:80/UDP", &[])],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: udp(CLIENT, "203.0.113.10:80"),
            expect: Expect::Dropped(DropReason::NotInSrcRange),
        },
        Case {
            name: "another Service's range does not admit",
            services: vec![
                load_balancer("203.0.113.10:80/TCP", &["10.0.0.0/8"]),
                load_balancer("203.0.113.11:80/TCP", &["192.168.56.0/24"]),
            ],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: tcp_syn(CLIENT, "203.0.113.10:80"),
            expect: Expect::Dropped(DropReason::NotInSrcRange),
        },
        Case {
            name: "pods are not checked",
            services: vec![load_balancer("203.0.113.10:80/TCP", &["10.0.0.0/8"])],
            config_flags: 0,
            hook: Hook::FromPod,
            input: tcp_syn("172.16.0.7:40000", "203.0.113.10:80"),
            expect: Expect::Rewritten(tcp_syn("172.16.0.7:40000", BACKEND)),
        },
        Case {
            name: "a load balancer without ranges admits everyone",
            services: vec![
                service("203.0.113.10:80/TCP", &[BACKEND]).kind(FrontendKind::LoadBalancer),
            ],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: tcp_syn(CLIENT, "203.0.113.10:80"),
            expect: Expect::Rewritten(tcp_syn(CLIENT, BACKEND)),
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn a_denied_source_leaves_no_conntrack_entry_and_its_event_names_policy_rs() {
    let mut datapath = Datapath::load();
    datapath.sync(&[load_balancer("203.0.113.10:80/TCP", &["10.0.0.0/8"])]);
    let run = datapath.run(Hook::FromNetdev, &tcp_syn(CLIENT, "203.0.113.10:80"));
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(datapath.conntrack(), vec![], "no state for a denied client");
    let events = datapath.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, 177);
    assert_eq!(events[0].file, SourceFile::Policy as u8);
    assert_eq!(events[0].saddr, ip_be(ip("192.168.56.10")));
}

#[test]
fn source_ranges_changed_by_a_sync_apply_to_the_next_new_flow() {
    let mut datapath = Datapath::load();
    let input = tcp_syn(CLIENT, "203.0.113.10:80");
    datapath.sync(&[load_balancer("203.0.113.10:80/TCP", &["10.0.0.0/8"])]);
    assert_eq!(datapath.run(Hook::FromNetdev, &input).verdict, TC_ACT_SHOT);

    // The client's range added: admitted.
    datapath.sync(&[load_balancer(
        "203.0.113.10:80/TCP",
        &["10.0.0.0/8", "192.168.0.0/16"],
    )]);
    let run = datapath.run(Hook::FromNetdev, &input);
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, tcp_syn(CLIENT, BACKEND));

    // Ranges removed from the Service: every client is admitted.
    let other_client = tcp_syn("198.18.0.1:40000", "203.0.113.10:80");
    datapath.sync(&[service("203.0.113.10:80/TCP", &[BACKEND]).kind(FrontendKind::LoadBalancer)]);
    let run = datapath.run(Hook::FromNetdev, &other_client);
    assert_eq!(run.frame, tcp_syn("198.18.0.1:40000", BACKEND));
}
