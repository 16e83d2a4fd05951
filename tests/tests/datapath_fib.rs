//! Forwarding by FIB lookup and redirect (`fib.rs`), which SNATed requests and their
//! reverse-SNATed replies take.
//!
//! A packet too big for the egress device that is no GSO packet is dropped with 136
//! "Fragmentation needed", never as a failed lookup (`BPF_PROG_TEST_RUN` in a `FibNetns`); with
//! DF set it is answered with ICMP "fragmentation needed" (datapath_icmp.rs), and path-MTU
//! discovery works across a link with a smaller MTU on the SNAT path (real traffic, below).
//!
//! Bulk TCP runs at a rate near the direct path's, with no drop: the story's lab (`lb_lab::Lab`:
//! a router, two nodes, BGP) with the datapath attached by the fixture to k8smaster0's `eth0`,
//! and a ClusterIP whose only backend, nginx-1, runs on k8sslave0. A client in the router
//! reaches it through k8smaster0, which DNATs and SNATs the flow and forwards both directions
//! with `fib::redirect`; every other leg (router → pod, the replies from k8sslave0 to
//! k8smaster0) is plain routing. Veths, like real NICs with GRO, hand the program GSO
//! super-packets far larger than the MTU (TSO is on by default), which the lookup must not
//! refuse. iperf3 measures the lb path against the direct path to the pod in the same run, both
//! directions, with the veths' default offloads (GRO off) and with GRO on every node's `eth0`.
//!
//! Needs root, `bird`, `iperf3`, `ethtool`, `ss` and `timeout` (`cargo xtask setup`).
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use lb_common::config::{
    CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig, EVENTS_PER_SEC, SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use lb_common::drop::{DropReason, Hook, SourceFile};
use lb_lab::Lab;
use lb_lab::topology::{MASTER, NGINX_1, NGINX_VIP, NODE_DEV, NODES, SLAVE};
use lb_testkit::packet::{ip, ip_be, tcp_ack, tcp_syn};
use lb_testkit::{Netns, ok, veth};
use lb_tests::fixture::{
    Datapath, FibNetns, ServiceExt as _, TC_ACT_REDIRECT, TC_ACT_SHOT, service,
};
use serde_json::Value;

/// Port of the iperf3 server in the backend pod, and of the frontend in front of it.
const IPERF_PORT: u16 = 5201;
/// Seconds each iperf3 run sends for: long enough to leave slow start, short enough that the
/// eight runs stay within half a minute.
const SECONDS: &str = "2";
/// The share of the direct path's rate the lb path must reach. It takes one hop more (through
/// k8smaster0) on a machine whose cores the sender, the receiver and both forwarders share, so
/// it is slower; a path that drops super-packets reaches close to 0.
const MIN_SHARE: f64 = 0.25;
/// How long an iperf3 client may take in all before it is killed: a stalled transfer must fail
/// the test, not hang it.
const CLIENT_TIMEOUT: &str = "15";
/// How long the iperf3 server gets to listen.
const SERVER_START: Duration = lb_testkit::patience::SETTLE_WITHIN;

/// The lab with the datapath on k8smaster0. Field order is drop order: the programs are
/// detached (and their pins removed) before the namespaces go.
struct Cluster {
    datapath: Datapath,
    lab: Lab,
}

impl Cluster {
    /// The lab with BGP up, and k8smaster0's `eth0` running from-netdev with external access to
    /// ClusterIPs on and its address to SNAT to, serving `NGINX_VIP:IPERF_PORT` from nginx-1
    /// (on the other node).
    fn up() -> Self {
        let mut lab = ok(Lab::up(), "build the lab");
        ok(lab.start_bgp(), "start BGP");
        let mut datapath = Datapath::load();
        datapath.set_config(DatapathConfig {
            flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
            node_addr: ip_be(MASTER.ip),
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
            events_per_sec: EVENTS_PER_SEC,
            ..DatapathConfig::default()
        });
        let frontend = format!("{NGINX_VIP}:{IPERF_PORT}/TCP");
        let backend = format!("{}:{IPERF_PORT}", NGINX_1.ip);
        datapath.sync(&[service(&frontend, &[&backend]).remote()]);
        ok(
            ok(lab.node(MASTER.name), "master").within(|| {
                datapath.attach(Hook::FromNetdev, NODE_DEV);
            }),
            "enter k8smaster0",
        );
        Self { datapath, lab }
    }

    /// Runs one iperf3 test from the router to `target` (forward: the router sends; reverse:
    /// nginx-1 sends) against a fresh one-shot server in nginx-1, and returns the receiver's
    /// rate in bit/s. A transfer that fails or stalls reads as 0, with what iperf3 said.
    fn iperf3(&self, target: Ipv4Addr, reverse: bool, logs: &Path) -> (f64, String) {
        let pod = ok(self.lab.pod(NGINX_1.name), "nginx-1");
        let (ip, port) = (NGINX_1.ip.to_string(), IPERF_PORT.to_string());
        let log = logs.join(format!("iperf3-{target}-{reverse}.log"));
        let mut server = ok(
            pod.spawn("iperf3", &["-s", "-1", "-B", &ip, "-p", &port], &log),
            "start iperf3 -s",
        );
        let listening = format!("{ip}:{port} ");
        ok(
            server.wait_until("iperf3 -s to listen", SERVER_START, || {
                let out = pod.run("ss", &["-Hltn"]).map_err(|err| err.to_string())?;
                if out.contains(&listening) {
                    Ok(Some(()))
                } else {
                    Err(out)
                }
            }),
            "iperf3 -s",
        );
        let target = target.to_string();
        let mut args = vec![
            CLIENT_TIMEOUT,
            "iperf3",
            "-c",
            &target,
            "-p",
            &port,
            "-t",
            SECONDS,
            "-J",
        ];
        if reverse {
            args.push("-R");
        }
        let outcome = ok(self.lab.router().exec("timeout", &args), "run iperf3");
        let report = serde_json::from_str::<Value>(&outcome.stdout).ok();
        let rate = report
            .as_ref()
            .filter(|report| report.get("error").is_none())
            .and_then(|report| report["end"]["sum_received"]["bits_per_second"].as_f64());
        let said = match (&report, rate) {
            (Some(report), Some(_)) => format!(
                "{} ({}): retransmits {}",
                outcome.cmdline, outcome.status, report["end"]["sum_sent"]["retransmits"]
            ),
            _ => format!("{outcome:?}"),
        };
        let rate = rate.unwrap_or(0.0);
        (rate, said)
    }
}

/// Switches GRO on for `dev` in `ns` and checks that the kernel took it.
fn gro_on(ns: &Netns, dev: &str) {
    ok(ns.run("ethtool", &["-K", dev, "gro", "on"]), "ethtool -K");
    let features = ok(ns.run("ethtool", &["-k", dev]), "ethtool -k");
    assert!(
        features
            .lines()
            .any(|line| line.trim() == "generic-receive-offload: on"),
        "GRO on {dev} in {}:\n{features}",
        ns.name()
    );
}

fn gbit(rate: f64) -> f64 {
    rate / 1e9
}

/// `frame` (Ethernet, IPv4 without options, TCP) grown to an IPv4 total length of
/// `total_len` with zero payload, its IPv4 length and header checksum fixed. The TCP checksum no
/// longer matches, which nothing on the dropped path checks.
fn grown_to(mut frame: Vec<u8>, total_len: u16) -> Vec<u8> {
    const IP: usize = 14;
    frame.resize(IP + usize::from(total_len), 0);
    frame[IP + 2..IP + 4].copy_from_slice(&total_len.to_be_bytes());
    frame[IP + 10..IP + 12].fill(0);
    let sum = frame[IP..IP + 20]
        .chunks(2)
        .map(|word| u32::from(u16::from_be_bytes([word[0], word[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    frame[IP + 10..IP + 12].copy_from_slice(&checksum.to_be_bytes());
    frame
}

#[test]
fn a_packet_too_big_for_the_egress_device_is_dropped_with_136_not_169() {
    const CLIENT: &str = "192.168.56.10:33802";
    const VIP: &str = "10.96.229.67:80";
    let netns = FibNetns::new("fib136", true);
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        node_addr: ip_be(ip("192.168.56.4")),
        snat_port_min: SNAT_PORT_MIN,
        snat_port_max: SNAT_PORT_MAX,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(&[service("10.96.229.67:80/TCP", &["10.244.2.7:8080"]).remote()]);
    let syn =
        netns.enter(|| datapath.run_on(Hook::FromNetdev, &tcp_syn(CLIENT, VIP), netns.ifindex));
    assert_eq!(syn.verdict, TC_ACT_REDIRECT, "the flow is set up");

    // The egress device's MTU is 1500; the kernel lets a frame through up to the MTU plus an
    // Ethernet and a VLAN header. A test run's packet is never a GSO packet.
    let big = grown_to(tcp_ack(CLIENT, VIP), 2000);
    let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, &big, netns.ifindex));

    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.all_drops(),
        vec![(DropReason::FragNeeded as u8, Hook::FromNetdev as u8, 1)],
        "one drop, counted as 136 Fragmentation needed"
    );
    let events = datapath.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    // Without DF it is not answered (the stack would fragment it; lb cannot): only dropped,
    // where the answer would have been decided.
    assert_eq!(
        (events[0].reason, events[0].file, events[0].len as usize),
        (136, SourceFile::Icmp as u8, big.len())
    );
}

#[test]
fn bulk_tcp_from_outside_to_a_remote_backend_runs_near_the_direct_rate_without_drops() {
    let cluster = Cluster::up();
    let logs = tempfile::Builder::new()
        .prefix("lb-datapath-fib-")
        .tempdir()
        .expect("create a temporary directory");
    for gro in ["off (veth default)", "on"] {
        if gro == "on" {
            for node in NODES {
                gro_on(ok(cluster.lab.node(node.name), "node"), NODE_DEV);
            }
        }
        for reverse in [false, true] {
            let direction = if reverse { "reverse (-R)" } else { "forward" };
            let (direct, direct_said) = cluster.iperf3(NGINX_1.ip, reverse, logs.path());
            assert!(
                direct > 0.0,
                "the direct path must carry data: {direct_said}"
            );
            let (via_lb, lb_said) = cluster.iperf3(NGINX_VIP, reverse, logs.path());
            eprintln!(
                "GRO {gro}, {direction}: ClusterIP {:.2} Gbit/s, pod directly {:.2} Gbit/s",
                gbit(via_lb),
                gbit(direct)
            );
            assert!(
                via_lb >= MIN_SHARE * direct,
                "GRO {gro}, {direction}: {:.3} Gbit/s through the ClusterIP, {:.3} Gbit/s \
                 directly; drops {:?}\n{lb_said}",
                gbit(via_lb),
                gbit(direct),
                cluster.datapath.all_drops()
            );
            assert_eq!(
                cluster
                    .datapath
                    .drop_count(DropReason::NoFib, Hook::FromNetdev),
                0,
                "GRO {gro}, {direction}: no FIB lookup failed"
            );
            assert_eq!(
                cluster.datapath.all_drops(),
                vec![],
                "GRO {gro}, {direction}: no drop of any reason"
            );
        }
    }
}

/// MTU of the link the SNATed leg takes in the path-MTU test: smaller than the client's 1500.
const SMALL_MTU: &str = "1280";

impl Cluster {
    /// Routes k8smaster0's traffic to nginx-1 over a link of its own to k8sslave0 whose MTU is
    /// [`SMALL_MTU`]; the client's leg and the replies keep the LAN's 1500.
    fn narrow_the_snat_leg(&self) {
        let master = ok(self.lab.node(MASTER.name), "k8smaster0");
        let slave = ok(self.lab.node(SLAVE.name), "k8sslave0");
        ok(veth(master, "mtu0", slave, "mtu1"), "the narrow link");
        for (ns, dev, addr) in [
            (master, "mtu0", "10.255.0.1/30"),
            (slave, "mtu1", "10.255.0.2/30"),
        ] {
            ok(
                ns.ip(&["link", "set", dev, "mtu", SMALL_MTU]),
                "set the MTU",
            );
            ok(ns.addr(dev, addr), "address the narrow link");
        }
        // The SNATed packets arrive on the narrow link from k8smaster0's LAN address, which
        // k8sslave0 routes over the LAN: no reverse-path filter on that link.
        ok(
            slave.sysctl("net.ipv4.conf.all.rp_filter", "0"),
            "rp_filter",
        );
        ok(
            slave.sysctl("net.ipv4.conf.mtu1.rp_filter", "0"),
            "rp_filter",
        );
        let nginx = format!("{}/32", NGINX_1.ip);
        ok(
            master.route(&[&nginx, "via", "10.255.0.2", "dev", "mtu0"]),
            "route nginx-1 over the narrow link",
        );
    }
}

#[test]
fn path_mtu_discovery_works_across_a_smaller_mtu_link_on_the_snat_path() {
    let cluster = Cluster::up();
    cluster.narrow_the_snat_leg();
    let logs = tempfile::Builder::new()
        .prefix("lb-datapath-fib-pmtu-")
        .tempdir()
        .expect("create a temporary directory");
    let vip = NGINX_VIP.to_string();
    let before = ok(
        cluster.lab.router().run("ip", &["route", "get", &vip]),
        "ip route get",
    );
    assert!(!before.contains("mtu"), "no path MTU known yet: {before}");

    // The router sends: its full-sized segments (and TSO super-packets cut at its MSS) do not
    // fit the narrow link, and only the ICMP answer tells it to send smaller ones.
    let (rate, said) = cluster.iperf3(NGINX_VIP, false, logs.path());
    eprintln!(
        "{SMALL_MTU}-byte link on the SNAT leg: {:.2} Gbit/s through the ClusterIP",
        gbit(rate)
    );
    assert!(rate > 0.0, "the transfer completes: {said}");

    let after = ok(
        cluster.lab.router().run("ip", &["route", "get", &vip]),
        "ip route get",
    );
    assert!(
        after.contains(&format!("mtu {SMALL_MTU}")),
        "the client learned the narrow link's MTU from lb's answer: {after}"
    );
    let answered = cluster
        .datapath
        .drop_count(DropReason::FragNeeded, Hook::FromNetdev);
    assert!(answered >= 1, "each answer is counted as a 136 drop");
    assert_eq!(
        cluster.datapath.all_drops(),
        vec![(
            DropReason::FragNeeded as u8,
            Hook::FromNetdev as u8,
            answered
        )],
        "no drop of any other reason"
    );
}
