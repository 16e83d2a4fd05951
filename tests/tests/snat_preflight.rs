//! The agent refuses to start when flows from outside may need SNAT (it has `--devices`) but
//! there is no address to SNAT them to, naming the interface and the option that fixes it, and
//! leaves the node as it was.

use lb_agent::config::AgentConfig;
use lb_testkit::{BPF_ROOT, Netns, ok};
use tokio_util::sync::CancellationToken;

#[test]
fn an_external_device_without_an_ipv4_address_and_no_node_ip_stops_the_start() {
    let ns = ok(
        Netns::create(&format!("lbt-snat-noaddr-{}", std::process::id())),
        "create the namespace",
    );
    ok(
        ns.ip(&[
            "link", "add", "ext0", "type", "veth", "peer", "name", "ext1",
        ]),
        "veth without an address",
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    ok(lb_testkit::ensure_bpffs(), "mount bpffs");
    let bpf_root = format!("{BPF_ROOT}/lb-test-noaddr-{}", std::process::id());
    let args = [
        "lb-agent".to_owned(),
        format!("--source=file:{}", dir.path().display()),
        "--devices=ext0".to_owned(),
        "--node-name=n1".to_owned(),
        format!("--bpf-root={bpf_root}"),
        format!("--socket={}", dir.path().join("lb.sock").display()),
        "--metrics-address=".to_owned(),
    ];
    let config = AgentConfig::from_args(args, |_| None).expect("a valid configuration");

    let result = ok(
        ns.within(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(lb_agent::run(config, CancellationToken::new()))
        }),
        "enter the namespace",
    );

    let err = result.expect_err("the agent must not start");
    assert_eq!(
        err.to_string(),
        "interface `ext0` has no IPv4 address to SNAT to; set --node-ip"
    );
    assert!(
        !std::path::Path::new(&bpf_root).exists(),
        "nothing was created under the bpf root"
    );
    assert!(!dir.path().join("lb.sock").exists(), "no socket was bound");
}

/// The IPv6 node address (issue 14) is the first device's first global IPv6 address: a
/// link-local one is no SNAT source, and a device with none leaves the agent without one
/// (IPv6 node ports unserved, IPv6 flows that need SNAT dropped) rather than stopping it.
#[test]
fn the_ipv6_node_address_is_the_first_global_one_of_the_device_and_link_local_does_not_count() {
    use lb_agent::datapath::devices::first_ipv6;
    let ns = ok(
        Netns::create(&format!("lbt-v6addr-{}", std::process::id())),
        "create the namespace",
    );
    for args in [
        &[
            "link", "add", "v6a0", "type", "veth", "peer", "name", "v6a1",
        ][..],
        &[
            "link", "add", "v6b0", "type", "veth", "peer", "name", "v6b1",
        ],
        &["addr", "add", "fe80::5/64", "dev", "v6a0", "nodad"],
        &["addr", "add", "fd00:77::5/64", "dev", "v6a0", "nodad"],
        &["addr", "add", "fe80::6/64", "dev", "v6b0", "nodad"],
        &["addr", "add", "10.77.0.6/24", "dev", "v6b0"],
    ] {
        ok(ns.ip(args), "set up the interfaces");
    }
    let found = ok(
        ns.within(|| (first_ipv6("v6a0"), first_ipv6("v6b0"), first_ipv6("none0"))),
        "enter the namespace",
    );
    assert_eq!(
        found,
        (Some("fd00:77::5".parse().expect("ip")), None, None),
        "global address; link-local and IPv4 only; no such interface"
    );
}
