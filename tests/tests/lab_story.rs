//! The story of `docs/seed-story.md`, end to end in the lab (`lb_lab::Lab`): two nodes behind a
//! BIRD router, pods behind veths, one lb-agent per node. The same library builds the lab for
//! `cargo xtask demo`; these tests assert what the demo prints.
//!
//! `lab_routes_pod_cidrs_over_bgp_…` needs no agent: routing, BGP and the pods. The story test
//! runs `lb-agent` and `lbctl` from `LB_BIN_DIR`; when that is unset it builds them with cargo
//! into this workspace's target directory first. Both need root, `bird`, `curl`, `ping` and
//! `python3` (`cargo xtask setup` installs them); neither skips anything when they are missing.
use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::Instant;

use lb_lab::Lab;
use lb_lab::probe::{curl_head, curl6_head, ping};
use lb_lab::topology::{
    BUSYBOX, CLIENT, CLUSTER_IPS, MASTER, NGINX_1, NGINX_2, NGINX_VIP, ROUTER_IP, SLAVE, v6,
};
use lb_testkit::ok;
use lb_testkit::patience::{SETTLE_WITHIN, SILENCE};
use lb_tests::probe::{http_get, http_get_unanswered};

/// Tries of step 4: with a uniform choice between two backends, the chance that 20 tries all
/// land on one is 2 * 2^-20.
const STEP4_TRIES: usize = 20;

#[test]
fn lab_routes_pod_cidrs_over_bgp_and_pods_reach_the_router() {
    let mut lab = ok(Lab::up(), "build the lab");
    ok(lab.start_bgp(), "start BGP");

    // The router's table, as the story prints it: each ClusterIP via both nodes, k8smaster0
    // preferred; each pod CIDR via its own node.
    let table = ok(
        ok(lab.bird("router"), "router BIRD").show_route(),
        "birdc show route",
    );
    for vip in CLUSTER_IPS {
        let block = route_block(&table, &format!("{vip}/32"));
        assert!(block.len() == 2, "{vip}/32 via both nodes:\n{table}");
        assert!(
            block[0].contains(&format!("via {} ", MASTER.ip)) && block[0].contains(" * "),
            "{vip}/32 preferred via k8smaster0:\n{table}"
        );
        assert!(block[1].contains(&format!("via {} ", SLAVE.ip)), "{table}");
    }
    for node in [MASTER, SLAVE] {
        let block = route_block(&table, node.pod_cidr);
        assert!(
            block.len() == 1 && block[0].contains(&format!("via {} ", node.ip)),
            "{} via {}:\n{table}",
            node.pod_cidr,
            node.name
        );
    }
    // The nodes never install their own announcements: no ClusterIP route in a node's kernel.
    for node in [MASTER, SLAVE] {
        let routes = ok(
            ok(lab.node(node.name), "node").ip(&["route", "show"]),
            "routes",
        );
        for vip in CLUSTER_IPS {
            assert!(
                !routes.contains(&vip.to_string()),
                "{} routes {vip}:\n{routes}",
                node.name
            );
        }
    }

    // Step 1: pod IPs are routable from the router.
    for pod in [NGINX_1, NGINX_2] {
        let (outcome, reply) = ok(
            http_get(lab.router(), SocketAddrV4::new(pod.ip, 80)),
            "curl",
        );
        assert_eq!(reply.status, Some(200), "{outcome:?}");
        assert_eq!(reply.pod_ip, Some(pod.ip), "{outcome:?}");
        assert_eq!(reply.client_ip, Some(ROUTER_IP), "{outcome:?}");
    }

    // Pod to pod across nodes, over the iBGP-learned routes, without any SNAT.
    let (outcome, reply) = ok(
        http_get(
            ok(lab.pod(CLIENT.name), "pod"),
            SocketAddrV4::new(NGINX_2.ip, 80),
        ),
        "curl",
    );
    assert_eq!(reply.status, Some(200), "{outcome:?}");
    assert_eq!(reply.client_ip, Some(CLIENT.ip), "{outcome:?}");

    // Step 5: pods reach the outside.
    let (outcome, received) = ok(ping(ok(lab.pod(BUSYBOX.name), "pod"), ROUTER_IP, 3), "ping");
    assert_eq!(received, 3, "{outcome:?}");
}

#[test]
fn lab_replays_the_story_with_lb_in_ciliums_place() {
    let bins = lb_tests::agent::binaries();
    let mut lab = ok(Lab::up(), "build the lab");
    ok(lab.start_bgp(), "start BGP");
    ok(lab.start_agents(&bins), "start the agents");
    let master = ok(lab.agent(MASTER.name), "master agent");
    let slave = ok(lab.agent(SLAVE.name), "slave agent");

    // Step 1: the router reaches a pod IP.
    let (outcome, reply) = ok(
        http_get(lab.router(), SocketAddrV4::new(NGINX_1.ip, 80)),
        "curl",
    );
    assert_eq!(reply.status, Some(200), "{outcome:?}");

    // Step 2: the ClusterIP from outside is dropped on k8smaster0 (the router's best path),
    // with the story's drop line naming the packet as it arrived.
    let mut monitor = ok(master.monitor_drops(), "lbctl monitor");
    // The monitor may subscribe after the first SYN is dropped: each try sends a few SYNs.
    let deadline = Instant::now() + SETTLE_WITHIN;
    let line = loop {
        let (outcome, reply) = ok(
            http_get_unanswered(lab.router(), SocketAddrV4::new(NGINX_VIP, 80)),
            "curl",
        );
        assert!(
            !outcome.success && reply.status.is_none(),
            "the SYN must be dropped: {outcome:?}"
        );
        let found = monitor.wait_for_line("the Is a ClusterIP drop", SILENCE, |l| {
            l.contains("drop (Is a ClusterIP)")
                && l.contains(&format!("{ROUTER_IP}:"))
                && l.contains(&format!("-> {NGINX_VIP}:80 tcp SYN"))
        });
        if found.is_ok() || Instant::now() >= deadline {
            break found.ok();
        }
    };
    let line = line.unwrap_or_else(|| {
        panic!(
            "no Is a ClusterIP drop for {NGINX_VIP} on k8smaster0; monitor printed {:?}",
            monitor.seen()
        )
    });
    // `flow` is the skb hash, as in Cilium: its value varies, its form does not.
    let flow = line
        .strip_prefix("xx drop (Is a ClusterIP) flow 0x")
        .and_then(|rest| rest.split_once(" to endpoint 0, file policy.rs line "))
        .map(|(hash, _)| hash);
    assert!(
        flow.is_some_and(|hash| !hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    assert!(line.contains(", , identity world->unknown: "), "{line}");
    drop(monitor);
    for agent in [master, slave] {
        let list = ok(agent.lbctl(&["service", "list"]), "lbctl service list");
        let list = ok(list.into_stdout(), "lbctl service list");
        assert!(list.contains(&format!("{NGINX_VIP}:80/TCP")), "{list}");
        for pod in [NGINX_1, NGINX_2] {
            assert!(
                list.contains(&format!("=> {}:80/TCP (active)", pod.ip)),
                "{list}"
            );
        }
    }

    // Step 3: flip the flag on both nodes; the agents keep running.
    let pids = [master.process().pid(), slave.process().pid()];
    for agent in [master, slave] {
        let set = ok(
            agent.lbctl(&["config", "set", "bpf-lb-external-clusterip", "true"]),
            "lbctl config set",
        );
        ok(set.into_stdout(), "lbctl config set");
        let view = ok(agent.lbctl(&["config", "view"]), "lbctl config view");
        let view = ok(view.into_stdout(), "lbctl config view");
        assert!(
            view.lines()
                .any(|l| l.contains("bpf-lb-external-clusterip") && l.contains("true")),
            "{view}"
        );
        let file = agent.config_dir().join("bpf-lb-external-clusterip");
        let persisted = std::fs::read_to_string(&file).expect("read the config-dir file");
        assert_eq!(
            persisted.trim(),
            "true",
            "{} persists the change",
            file.display()
        );
    }

    // Step 4: the ClusterIP answers from outside, from both backends, although both live on
    // k8smaster0's peer: k8smaster0 SNATs to itself so the replies come back through it.
    let mut pods_seen = BTreeSet::new();
    let mut clients_seen = BTreeSet::new();
    for _ in 0..STEP4_TRIES {
        let (outcome, reply) = ok(
            http_get(lab.router(), SocketAddrV4::new(NGINX_VIP, 80)),
            "curl",
        );
        assert_eq!(reply.status, Some(200), "{outcome:?}");
        pods_seen.extend(reply.pod_ip);
        clients_seen.extend(reply.client_ip);
    }
    assert_eq!(
        pods_seen,
        BTreeSet::from([NGINX_2.ip, NGINX_1.ip]),
        "both backends answer"
    );
    assert_eq!(
        clients_seen,
        BTreeSet::from([MASTER.ip]),
        "remote backends see the node's SNAT"
    );
    assert_eq!(pids, [master.process().pid(), slave.process().pid()]);
    for agent in [master, slave] {
        ok(
            agent.lbctl(&["status"]).and_then(|o| o.into_stdout()),
            "agent still up",
        );
    }

    // Step 5: pods reach the outside.
    let (outcome, received) = ok(ping(ok(lab.pod(BUSYBOX.name), "pod"), ROUTER_IP, 3), "ping");
    assert_eq!(received, 3, "{outcome:?}");

    // Step 6: a pod on k8smaster0 → ClusterIP → a backend on k8sslave0, which sees the pod's
    // own address: pod traffic is never SNATed.
    let client = ok(lab.pod(CLIENT.name), "pod");
    let mut backends = BTreeSet::new();
    for _ in 0..4 {
        let (outcome, reply) = ok(http_get(client, SocketAddrV4::new(NGINX_VIP, 80)), "curl");
        assert_eq!(reply.status, Some(200), "{outcome:?}");
        assert_eq!(reply.client_ip, Some(CLIENT.ip), "{outcome:?}");
        backends.extend(reply.pod_ip);
    }
    assert!(
        backends
            .iter()
            .all(|ip| [NGINX_1.ip, NGINX_2.ip].contains(ip)),
        "{backends:?}"
    );
    let logged = ok(lab.server_log(NGINX_1.name), "log") + &ok(lab.server_log(NGINX_2.name), "log");
    assert!(
        logged.contains(&format!("client={}:", CLIENT.ip)),
        "{logged}"
    );
}

#[test]
fn dual_stack_lab_routes_ipv6_over_bird6_and_replays_the_clusterip_story_over_ipv6() {
    let mut lab = ok(Lab::up_dual_stack(), "build the dual-stack lab");
    ok(lab.start_bgp(), "start BGP (bird and bird6)");

    // bird6 on the router: each IPv6 pod CIDR via its own node, the IPv6 ClusterIP via both
    // nodes with k8smaster0 preferred, as over IPv4.
    let table = ok(
        ok(lab.bird6("router"), "router bird6").show_route(),
        "birdc6 show route",
    );
    for node in v6::NODES {
        let block = route_block(&table, node.pod_cidr);
        assert!(
            block.len() == 1 && block[0].contains(&format!("via {} ", node.ip)),
            "{} via {}:\n{table}",
            node.pod_cidr,
            node.name
        );
    }
    for vip in v6::CLUSTER_IPS {
        let block = route_block(&table, &format!("{vip}/128"));
        assert!(block.len() == 2, "{vip}/128 via both nodes:\n{table}");
        assert!(
            block[0].contains(&format!("via {} ", v6::MASTER.ip)) && block[0].contains(" * "),
            "{vip}/128 preferred via k8smaster0:\n{table}"
        );
    }
    // The router's kernel holds what bird6 learned.
    let routes = ok(
        lab.router().ip(&["-6", "route", "show", "proto", "bird"]),
        "router IPv6 routes",
    );
    for node in v6::NODES {
        assert!(
            routes.contains(&format!("{} via {}", node.pod_cidr, node.ip)),
            "{routes}"
        );
    }

    // The router reaches each nginx pod over IPv6, over those routes, and the pod sees the
    // router's own address.
    for pod in [v6::NGINX_1, v6::NGINX_2] {
        let (outcome, reply) = ok(curl6_head(lab.router(), pod.ip), "curl -6");
        assert_eq!(reply.status, Some(200), "{outcome:?}");
        assert_eq!(reply.pod_ip, Some(pod.ip), "{outcome:?}");
        assert_eq!(reply.client_ip, Some(v6::ROUTER_IP), "{outcome:?}");
    }
    // Pod to pod across nodes over the iBGP-learned IPv6 routes, unSNATed.
    let (outcome, reply) = ok(
        curl6_head(ok(lab.pod(v6::CLIENT.name), "pod"), v6::NGINX_2.ip),
        "curl -6",
    );
    assert_eq!(reply.status, Some(200), "{outcome:?}");
    assert_eq!(reply.client_ip, Some(v6::CLIENT.ip), "{outcome:?}");
    // A pod reaches the router over IPv6, and the router the pod.
    let (outcome, received) = ok(
        ping(ok(lab.pod(v6::BUSYBOX.name), "pod"), v6::ROUTER_IP, 3),
        "ping -6",
    );
    assert_eq!(received, 3, "{outcome:?}");
    let (outcome, received) = ok(ping(lab.router(), v6::BUSYBOX.ip, 1), "ping -6");
    assert_eq!(received, 1, "{outcome:?}");
    // The IPv4 half is the story's, untouched.
    let (outcome, reply) = ok(curl_head(lab.router(), NGINX_1.ip), "curl");
    assert_eq!(reply.status, Some(200), "{outcome:?}");

    // The story's ClusterIP steps over IPv6, with lb on both nodes.
    let bins = lb_tests::agent::binaries();
    ok(lab.start_agents(&bins), "start the agents");
    let master = ok(lab.agent(MASTER.name), "master agent");
    let slave = ok(lab.agent(SLAVE.name), "slave agent");

    // Step 2: from outside, the IPv6 ClusterIP is dropped on k8smaster0, and the monitor
    // says why, with the addresses in brackets.
    let mut monitor = ok(master.monitor_drops(), "lbctl monitor");
    let deadline = Instant::now() + SETTLE_WITHIN;
    let line = loop {
        let (outcome, reply) = ok(curl6_head(lab.router(), v6::NGINX_VIP), "curl -6");
        assert!(
            !outcome.success && reply.status.is_none(),
            "the SYN must be dropped: {outcome:?}"
        );
        let found = monitor.wait_for_line("the IPv6 Is a ClusterIP drop", SILENCE, |l| {
            l.contains("drop (Is a ClusterIP)")
                && l.contains(&format!("[{}]:", v6::ROUTER_IP))
                && l.contains(&format!("-> [{}]:80 tcp SYN", v6::NGINX_VIP))
        });
        if found.is_ok() || Instant::now() >= deadline {
            break found.ok();
        }
    };
    let line = line.unwrap_or_else(|| {
        panic!(
            "no Is a ClusterIP drop for {} on k8smaster0; monitor printed {:?}",
            v6::NGINX_VIP,
            monitor.seen()
        )
    });
    assert!(line.contains(", , identity world->unknown: "), "{line}");
    drop(monitor);
    for agent in [master, slave] {
        let list = ok(agent.lbctl(&["service", "list"]), "lbctl service list");
        let list = ok(list.into_stdout(), "lbctl service list");
        assert!(
            list.contains(&format!("[{}]:80/TCP", v6::NGINX_VIP)),
            "{list}"
        );
        for pod in [v6::NGINX_1, v6::NGINX_2] {
            assert!(
                list.contains(&format!("=> [{}]:80/TCP (active)", pod.ip)),
                "{list}"
            );
        }
    }

    // Step 3: the flag on, live, on both nodes.
    for agent in [master, slave] {
        let set = ok(
            agent.lbctl(&["config", "set", "bpf-lb-external-clusterip", "true"]),
            "lbctl config set",
        );
        ok(set.into_stdout(), "lbctl config set");
    }

    // Step 4: the IPv6 ClusterIP answers from outside, from both backends, which see
    // k8smaster0's IPv6 address (SNAT, as over IPv4).
    let mut pods_seen = BTreeSet::new();
    let mut clients_seen = BTreeSet::new();
    for _ in 0..STEP4_TRIES {
        let (outcome, reply) = ok(curl6_head(lab.router(), v6::NGINX_VIP), "curl -6");
        assert_eq!(reply.status, Some(200), "{outcome:?}");
        pods_seen.extend(reply.pod_ip);
        clients_seen.extend(reply.client_ip);
    }
    assert_eq!(
        pods_seen,
        BTreeSet::from([v6::NGINX_1.ip, v6::NGINX_2.ip]),
        "both backends answer"
    );
    assert_eq!(
        clients_seen,
        BTreeSet::from([v6::MASTER.ip]),
        "remote backends see the node's SNAT"
    );

    // Step 6: a pod → the IPv6 ClusterIP → a backend, which sees the pod's own address.
    let (outcome, reply) = ok(
        curl6_head(ok(lab.pod(v6::CLIENT.name), "pod"), v6::NGINX_VIP),
        "curl -6",
    );
    assert_eq!(reply.status, Some(200), "{outcome:?}");
    assert_eq!(reply.client_ip, Some(v6::CLIENT.ip), "{outcome:?}");
}

/// The lines of `birdc show route` for one network: its first line and its continuation lines.
fn route_block<'a>(table: &'a str, net: &str) -> Vec<&'a str> {
    let mut lines = table
        .lines()
        .skip_while(|line| !line.starts_with(&format!("{net} ")));
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    std::iter::once(first)
        .chain(lines.take_while(|line| line.starts_with(' ')))
        .collect()
}
