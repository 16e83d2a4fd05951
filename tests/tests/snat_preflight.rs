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
