//! A dual-stack Service fed to a running lb-agent through its file source ends up in both
//! families' maps (issue 14): the IPv4 ClusterIP in `LB4_SERVICES`, the IPv6 one and the IPv6
//! node ports in `LB6_SERVICES` with the IPv6 slice's endpoints in `LB6_BACKENDS`, and
//! `--node-ipv6` in `LB_CONFIG`. The agent runs in-process without devices (no namespace);
//! the maps are read through their pins, as a second process would.

use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap, Map, MapData};
use lb_agent::config::AgentConfig;
use lb_agent::datapath::maps::{
    Backend, ServiceKey, backend_addr_of, frontend_of, node_addr6_value,
};
use lb_common::{
    config::DatapathConfig,
    maps::{LB_CONFIG, LB4_SERVICES, LB6_BACKENDS, LB6_SERVICES, PIN_VERSION},
    service::{Backend6, ServiceEntry, ServiceKey4, ServiceKey6},
};
use lb_testkit::{BPF_ROOT, ok, wait_until};
use tokio_util::sync::CancellationToken;

const READY: Duration = Duration::from_secs(60);

/// Master entries of a services map pinned in `pin_dir`, as `VIP:port/proto` lines.
fn masters<K: aya::Pod>(pin_dir: &Path, name: &str, key: fn(K) -> ServiceKey) -> Vec<String> {
    let Ok(data) = MapData::from_pin(pin_dir.join(name)) else {
        return Vec::new();
    };
    let map: HashMap<MapData, K, ServiceEntry> =
        HashMap::try_from(Map::HashMap(data)).expect("a services map");
    let mut out: Vec<String> = map
        .keys()
        .map(|k| key(k.expect("read a key")))
        .filter(|k| k.slot() == 0 && k.proto() != 0)
        .map(|k| {
            let (vip, port, proto) = frontend_of(&k);
            format!("{}/{proto}", std::net::SocketAddr::new(vip, port))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_dual_stack_service_from_the_file_source_is_programmed_into_the_lb4_and_lb6_maps() {
    ok(lb_testkit::ensure_bpffs(), "mount bpffs");
    let dir = tempfile::tempdir().expect("temporary directory");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests directory");
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/c-api-dual-stack");
    for file in ["service.yaml", "endpointslice.yaml"] {
        std::fs::copy(testdata.join(file), manifests.join(file)).expect("copy the fixture");
    }
    // A dual-stack NodePort Service: its node port on the IPv6 node address too.
    std::fs::write(
        manifests.join("nodeport.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: np, namespace: edge}\n\
         spec:\n  type: NodePort\n  clusterIP: 10.96.88.6\n  clusterIPs: [10.96.88.6, fd00:10:96::6]\n  \
         ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n  \
         ports: [{port: 80, protocol: TCP, nodePort: 30080}]\n",
    )
    .expect("write the NodePort Service");
    let bpf_root = format!("{BPF_ROOT}/lb-test-dual-{}", std::process::id());
    let node_ipv6: std::net::Ipv6Addr = "fd00:56::10".parse().expect("an IPv6 address");
    let args = [
        "lb-agent".to_owned(),
        format!("--source=file:{}", manifests.display()),
        "--node-name=worker-a1".to_owned(),
        format!("--node-ipv6={node_ipv6}"),
        format!("--bpf-root={bpf_root}"),
        format!("--socket={}", dir.path().join("lb.sock").display()),
        "--metrics-address=".to_owned(),
    ];
    let config = AgentConfig::from_args(args, |_| None).expect("a valid configuration");
    let shutdown = CancellationToken::new();
    let agent = {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(lb_agent::run(config, shutdown))
        })
    };

    let pin_dir = Path::new(&bpf_root).join(PIN_VERSION);
    let want6 = [
        "[fd00:10:96::1f3a]:443/6",
        "[fd00:10:96::6]:80/6",
        "[fd00:56::10]:30080/6",
    ];
    let seen = wait_until("the IPv6 frontends in LB6_SERVICES", READY, || {
        let v6 = masters::<ServiceKey6>(&pin_dir, LB6_SERVICES, ServiceKey::V6);
        if v6 == want6 {
            Ok(Some(v6))
        } else {
            Err(format!("{v6:?}"))
        }
    });
    let v4 = masters::<ServiceKey4>(&pin_dir, LB4_SERVICES, ServiceKey::V4);
    let backends6: Vec<String> = MapData::from_pin(pin_dir.join(LB6_BACKENDS))
        .ok()
        .map(|data| {
            let map: HashMap<MapData, u32, Backend6> =
                HashMap::try_from(Map::HashMap(data)).expect("LB6_BACKENDS");
            let mut out: Vec<String> = map
                .iter()
                .map(|item| {
                    let (addr, port) = backend_addr_of(&Backend::V6(item.expect("read").1));
                    std::net::SocketAddr::new(addr, port).to_string()
                })
                .collect();
            out.sort();
            out
        })
        .unwrap_or_default();
    let config: Option<DatapathConfig> = MapData::from_pin(pin_dir.join(LB_CONFIG))
        .ok()
        .and_then(|data| Array::<MapData, DatapathConfig>::try_from(Map::Array(data)).ok())
        .and_then(|map| map.get(&0, 0).ok());

    shutdown.cancel();
    let stopped = agent.join().expect("the agent thread");
    let _ = std::fs::remove_dir_all(&bpf_root);

    seen.unwrap_or_else(|err| panic!("{err}"));
    stopped.unwrap_or_else(|err| panic!("the agent failed: {err}"));
    assert_eq!(v4, ["10.96.88.5:443/6", "10.96.88.6:80/6"]);
    assert_eq!(
        backends6,
        ["[fd00:10:244:1::50]:8443", "[fd00:10:244:2::51]:8443"]
    );
    assert_eq!(
        config.map(|c| c.node_addr6),
        Some(node_addr6_value(Some(node_ipv6))),
        "--node-ipv6 is the datapath's IPv6 node address"
    );
}
