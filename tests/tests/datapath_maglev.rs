//! Maglev selection (`maglev.rs`) through the real entry points (`BPF_PROG_TEST_RUN`), each
//! datapath programmed by its own syncer as two agents on two nodes would program theirs: the
//! same 5-tuple reaches the same backend on both, whatever order each learnt the backends in
//! and whatever ids it gave them; the datapath's choice is exactly the agent's table indexed by
//! the documented tuple hash; removing one of N backends moves about 1/N of new flows.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_agent::{
    model::LbAlgorithm,
    sync::maglev::{self, Member, Settings},
};
use lb_common::{drop::Hook, service::maglev_hash};
use lb_testkit::packet::*;
use lb_tests::fixture::{Datapath, LoadOptions, TC_ACT_UNSPEC, service};

const VIP: &str = "10.96.0.10:80/UDP";
const VIP_ADDR: &str = "10.96.0.10:80";

/// A small table keeps the test's own table builds quick; the datapath reads any allowed M.
const TABLE_SIZE: u32 = 4_093;

fn settings() -> Settings {
    Settings {
        default: LbAlgorithm::Maglev,
        table_size: TABLE_SIZE,
        ..Settings::default()
    }
}

fn maglev_datapath() -> Datapath {
    Datapath::load_with(LoadOptions {
        selection: Some(settings()),
        ..LoadOptions::default()
    })
}

fn backends(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.244.{}.{}:8080", i % 3 + 1, i + 10))
        .collect()
}

fn refs(backends: &[String]) -> Vec<&str> {
    backends.iter().map(String::as_str).collect()
}

/// `count` client sockets spread over addresses and ports by a fixed xorshift sequence.
fn clients(count: usize) -> Vec<SocketAddrV4> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let [a, b, c, d, e, ..] = state.to_le_bytes();
            let port = u16::from_le_bytes([d, e]).max(1_024);
            SocketAddrV4::new(Ipv4Addr::new(10, a, b, c.max(1)), port)
        })
        .collect()
}

/// The backend a new UDP flow from `client` to the VIP was DNATed to.
fn backend_of(datapath: &Datapath, client: SocketAddrV4) -> SocketAddrV4 {
    let run = datapath.run(Hook::FromPod, &udp(&client.to_string(), VIP_ADDR));
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "forwarded");
    read_checked(&run.frame).dst
}

/// The backend the agent's table gives `client`, computed outside the datapath: the table
/// `maglev::build` makes for `backends`, indexed by `maglev_hash` of the tuple as the packet
/// carries it (network byte order) with the seed's tuple half.
fn predicted(backends: &[String], client: SocketAddrV4) -> SocketAddrV4 {
    let seed = settings().seed;
    let members: Vec<Member> = backends
        .iter()
        .map(|name| Member {
            name: name.clone(),
            weight: 1,
        })
        .collect();
    let sorted = maglev::sorted(&members);
    let table = maglev::build(TABLE_SIZE, seed.murmur(), &members);
    let vip = addr(VIP_ADDR);
    let hash = maglev_hash(
        ip_be(*client.ip()),
        ip_be(*vip.ip()),
        port_be(client.port()),
        port_be(vip.port()),
        seed.tuple(),
    );
    addr(&sorted[table[(hash % TABLE_SIZE) as usize] as usize].name)
}

#[test]
fn the_same_tuple_reaches_the_same_backend_on_two_nodes_that_learnt_backends_differently() {
    let all = backends(10);
    let mut node_a = maglev_datapath();
    node_a.sync(&[service(VIP, &refs(&all))]);

    // Node b first serves another Service (its backends take the low ids), then learns the
    // VIP's backends in the opposite order, in two steps.
    let mut node_b = maglev_datapath();
    let other = backends(13)[10..].to_vec();
    node_b.sync(&[service("10.96.0.11:53/UDP", &refs(&other))]);
    let mut reversed = all.clone();
    reversed.reverse();
    node_b.sync(&[service(VIP, &refs(&reversed[..4]))]);
    node_b.sync(&[
        service(VIP, &refs(&reversed)),
        service("10.96.0.11:53/UDP", &refs(&other)),
    ]);
    assert!(
        all.iter()
            .any(|b| node_a.backend_id(b) != node_b.backend_id(b)),
        "the nodes gave the backends different ids"
    );

    let mut used = std::collections::BTreeSet::new();
    for client in clients(2_000) {
        let on_a = backend_of(&node_a, client);
        assert_eq!(on_a, backend_of(&node_b, client), "{client}");
        assert_eq!(on_a, predicted(&all, client), "{client}");
        used.insert(on_a);
    }
    assert_eq!(used.len(), all.len(), "every backend gets flows");
}

#[test]
fn removing_one_of_n_backends_moves_about_one_nth_of_new_flows() {
    const N: usize = 10;
    let all = backends(N);
    let removed = addr(&all[3]);
    let kept: Vec<String> = all.iter().filter(|b| addr(b) != removed).cloned().collect();

    // The same node before and after the removal; the flows are new to it after (the tuples
    // run first on a second datapath that keeps all N, so no conntrack entry pins them).
    let mut node = maglev_datapath();
    node.sync(&[service(VIP, &refs(&all))]);
    node.sync(&[service(VIP, &refs(&kept))]);
    let mut before_removal = maglev_datapath();
    before_removal.sync(&[service(VIP, &refs(&all))]);

    let tuples = clients(10_000);
    let mut moved = 0usize;
    for client in &tuples {
        let before = backend_of(&before_removal, *client);
        let after = backend_of(&node, *client);
        assert_ne!(
            after, removed,
            "{client}: a removed backend is never chosen"
        );
        if before == removed {
            assert_ne!(after, before);
        }
        if before != after {
            moved += 1;
        }
        assert_eq!(after, predicted(&kept, *client), "{client}");
    }
    let fraction = moved as f64 / tuples.len() as f64;
    assert!(
        (0.8 / N as f64..1.25 / N as f64 + 0.01).contains(&fraction),
        "{moved} of {} flows moved ({fraction:.4}; 1/N = {:.4})",
        tuples.len(),
        1.0 / N as f64
    );
}

#[test]
fn a_random_service_beside_a_maglev_one_still_spreads_one_client_s_flows_at_random() {
    // The node default is Maglev; the annotation (honoured with `annotation: true`) turns one
    // Service back to random: the same tuple then lands on different backends across fresh
    // datapaths, while the Maglev Service's stays put.
    let all = backends(8);
    let mut random = service("10.96.0.12:80/UDP", &refs(&all));
    random.algorithm = Some(LbAlgorithm::Random);
    let maglev_service = service(VIP, &refs(&all));
    let annotated = Settings {
        annotation: true,
        ..settings()
    };
    let client = "10.1.2.3:40000";
    let mut random_choices = std::collections::BTreeSet::new();
    let mut maglev_choices = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let mut node = Datapath::load_with(LoadOptions {
            selection: Some(annotated),
            ..LoadOptions::default()
        });
        node.sync(&[random.clone(), maglev_service.clone()]);
        let run = node.run(Hook::FromPod, &udp(client, "10.96.0.12:80"));
        random_choices.insert(read_checked(&run.frame).dst);
        // Another source port: both flows may reach the same backend, and replies must differ.
        maglev_choices.insert(backend_of(&node, addr("10.1.2.3:40001")));
    }
    assert_eq!(maglev_choices.len(), 1, "{maglev_choices:?}");
    // 8 draws of 8 backends all equal: 8^-7.
    assert!(random_choices.len() > 1, "{random_choices:?}");
}

#[test]
fn with_client_ip_affinity_a_client_s_flows_share_one_entry_on_every_node() {
    use lb_tests::fixture::ServiceExt as _;
    // The source port is hashed as 0: on a node that has never seen the client (no affinity
    // entry), every connection of the client still lands on the backend any other node picks.
    let all = backends(10);
    let mut node_a = maglev_datapath();
    node_a.sync(&[service(VIP, &refs(&all)).affinity(10_800)]);
    let mut reversed = all.clone();
    reversed.reverse();
    let mut node_b = maglev_datapath();
    node_b.sync(&[service(VIP, &refs(&reversed)).affinity(10_800)]);
    let mut used = std::collections::BTreeSet::new();
    for client in clients(40) {
        let on_a = backend_of(&node_a, client);
        let other_port = SocketAddrV4::new(*client.ip(), client.port() ^ 0x5555);
        assert_eq!(backend_of(&node_b, other_port), on_a, "{client}");
        used.insert(on_a);
    }
    assert!(used.len() > 1, "clients still spread: {used:?}");
}
