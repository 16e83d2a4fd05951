//! Endpoint churn under traffic (issue 10): lb-agent with `--source file:DIR` on a node in
//! namespaces (`Topology`), its Service's endpoints rewritten 1000 times while a client pod
//! holds one keep-alive TCP connection to a backend that stays.
//!
//! - The connection survives every update: each of its requests (a line to the echo server on
//!   one socket, back to back, for the whole run) is answered by the backend it started with.
//! - New connections never reach a removed backend once the change is in the maps: at every
//!   tenth update the other backend is removed, the test waits until `lbctl service list`
//!   shows that update, then opens fresh connections, which all reach the one that stays.
//!
//! Every update also replaces a terminating endpoint with a new address (never selected for
//! new flows): it marks the update in the maps, and makes every update allocate and retire a
//! backend id. The source polls the directory, so updates between checkpoints are batched;
//! the test counts the passes that wrote the maps from the agent's log.
//!
//! Needs root and `python3`; runs `lb-agent` and `lbctl` from `LB_BIN_DIR`, or builds them
//! first (see `lb_tests::agent::binaries`).
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use lb_lab::Agent;
use lb_lab::probe::EchoSession;
use lb_testkit::patience::{ANSWER_WITHIN, SETTLE_WITHIN};
use lb_testkit::wait_until;
use lb_tests::manifests::{Manifest, Port, endpoint};
use lb_tests::topology::{BACKEND_IPS, ECHO_PORT, Topology};

/// The service's ClusterIP.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// The service's port (TCP, to the echo servers).
const PORT: u16 = 7000;
/// Endpoint updates written.
const UPDATES: usize = 1000;
/// Every this many updates the other backend is removed and the test waits for the maps.
const CHECKPOINT_EVERY: usize = 10;
/// Fresh connections opened at each checkpoint.
const FRESH_CONNECTIONS: usize = 3;

/// The address of update `n`'s terminating endpoint: a new one for every update.
fn marker(n: usize) -> Ipv4Addr {
    let n = u32::try_from(n).expect("few updates");
    Ipv4Addr::new(10, 244, 100 + (n / 250) as u8, 1 + (n % 250) as u8)
}

/// The Service and its EndpointSlice for update `n`: `stays` ready, `other` ready when
/// given, and update `n`'s marker serving but terminating.
fn manifest(n: usize, stays: Ipv4Addr, other: Option<Ipv4Addr>) -> String {
    let endpoint = |ip, ready| endpoint(ip, "node", ready);
    let endpoints = std::iter::once(endpoint(stays, true))
        .chain(other.map(|other| endpoint(other, true)))
        .chain([endpoint(marker(n), false)]);
    Manifest::new("churn", VIP)
        .port(Port::tcp("echo", PORT, ECHO_PORT))
        .endpoints(endpoints)
        .to_yaml()
}

/// The node and its agent, which reads the topology's manifests directory. Field order is drop
/// order: the agent stops (and its pins go) before the namespaces.
struct Cluster {
    agent: Agent,
    topology: Topology,
}

impl Cluster {
    fn up(test: &str) -> Self {
        let topology = Topology::new(test);
        let agent = lb_tests::agent::start(&topology, test, &topology.manifests());
        Self { agent, topology }
    }

    /// Writes the manifest whole (write aside, rename), as an editor or a ConfigMap does.
    fn write(&self, contents: &str) {
        self.topology.write_manifest("churn.yaml", contents);
    }

    /// Waits until `lbctl service list` shows update `n` (its marker), and returns the list.
    fn await_in_maps(&mut self, n: usize) -> String {
        let needle = format!("{}:{ECHO_PORT}/TCP", marker(n));
        let Self { agent, .. } = self;
        wait_until(&format!("update {n} in the maps"), SETTLE_WITHIN, || {
            agent
                .check_running()
                .map_err(|err| format!("the agent exited: {err}"))?;
            let list = agent
                .lbctl(&["service", "list"])
                .map_err(|err| err.to_string())?
                .into_stdout()
                .map_err(|err| err.to_string())?;
            if list.contains(&needle) {
                Ok(Some(list))
            } else {
                Err(list)
            }
        })
        .unwrap_or_else(|err| panic!("{err}"))
    }

    /// Opens a connection from the client pod to the service and exchanges one line on it.
    fn connect(&self, what: &str) -> (EchoSession, Ipv4Addr) {
        let target = SocketAddrV4::new(VIP, PORT);
        let mut session = EchoSession::connect(&self.topology.client.ns, target, ANSWER_WITHIN)
            .unwrap_or_else(|err| panic!("{what}: connect to {target}: {err}"));
        let reply = session
            .ask(what)
            .unwrap_or_else(|err| panic!("{what}: first exchange: {err}"));
        assert_eq!(
            reply.client,
            session.local(),
            "{what}: no SNAT, and the reply is to this connection"
        );
        (session, reply.pod_ip)
    }

    /// How many passes wrote the maps, per the agent's log.
    fn passes_that_wrote(&self) -> usize {
        let log = std::fs::read_to_string(self.agent.process().log()).expect("read the agent log");
        log.lines()
            .filter(|line| line.contains("maps synced"))
            .count()
    }
}

/// What the keep-alive client saw.
#[derive(Debug, Default)]
struct KeepAlive {
    answered: usize,
    /// The first failure: which request, and why.
    failure: Option<String>,
}

/// Exchanges lines on `session` back to back until `stop`, each answer checked to come from
/// `backend`; stops at the first failure.
fn keep_alive(mut session: EchoSession, backend: Ipv4Addr, stop: &AtomicBool) -> KeepAlive {
    let mut seen = KeepAlive::default();
    while !stop.load(Ordering::Relaxed) {
        let line = format!("request {}", seen.answered);
        match session.ask(&line) {
            Ok(reply) if reply.pod_ip == backend && reply.payload == line => seen.answered += 1,
            Ok(reply) => {
                seen.failure = Some(format!("{line}: answered by {reply:?}"));
                break;
            }
            Err(err) => {
                seen.failure = Some(format!("{line}: {err}"));
                break;
            }
        }
    }
    seen
}

#[test]
fn a_keep_alive_connection_survives_1000_endpoint_updates_and_new_ones_never_reach_a_removed_backend()
 {
    let started = Instant::now();
    let mut cluster = Cluster::up("endpoint_churn_keep_alive");
    let [stays, other] = BACKEND_IPS;

    // Only `stays` at first, so that the long-lived connection is pinned to it.
    cluster.write(&manifest(0, stays, None));
    cluster.await_in_maps(0);
    let (session, backend) = cluster.connect("the keep-alive connection");
    assert_eq!(backend, stays);
    let passes_before = cluster.passes_that_wrote();

    let stop = Arc::new(AtomicBool::new(false));
    let client = std::thread::spawn({
        let stop = stop.clone();
        move || keep_alive(session, stays, &stop)
    });

    let mut fresh = 0;
    for n in 1..=UPDATES {
        // `other` is removed at each checkpoint and comes and goes in between.
        let checkpoint = n % CHECKPOINT_EVERY == 0;
        let with_other = !checkpoint && n % 3 != 0;
        cluster.write(&manifest(n, stays, with_other.then_some(other)));
        if !checkpoint {
            continue;
        }
        let list = cluster.await_in_maps(n);
        assert!(
            !list.contains(&format!("{other}:")),
            "update {n} removed {other}:\n{list}"
        );
        for i in 0..FRESH_CONNECTIONS {
            let (_, reached) = cluster.connect(&format!("update {n}, new connection {i}"));
            assert_eq!(
                reached, stays,
                "update {n} is in the maps: a new connection never reaches the removed {other}"
            );
            fresh += 1;
        }
        if client.is_finished() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen = client.join().expect("the keep-alive client");
    let passes = cluster.passes_that_wrote() - passes_before;
    eprintln!(
        "{UPDATES} updates, {passes} passes wrote the maps, {} requests on the keep-alive \
         connection, {fresh} new connections, in {:?}",
        seen.answered,
        started.elapsed()
    );
    assert_eq!(
        seen.failure, None,
        "the keep-alive connection failed after {} answers",
        seen.answered
    );
    assert!(
        seen.answered >= UPDATES,
        "the connection carried load throughout ({} answers)",
        seen.answered
    );
    assert!(
        passes >= UPDATES / CHECKPOINT_EVERY,
        "the maps went through many generations ({passes} passes wrote them)"
    );
    cluster
        .agent
        .check_running()
        .unwrap_or_else(|err| panic!("the agent must never exit: {err}"));
}
