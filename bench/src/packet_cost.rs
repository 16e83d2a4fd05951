//! B1: per-packet cost of `from_pod` by path, with `BPF_PROG_TEST_RUN`, at several service
//! counts.
//!
//! `repeat > 1` reruns the program on the buffer the previous run rewrote, so only paths whose
//! rewrite is idempotent can be timed that way. Two methods, which must agree:
//!
//! - **repeat = 1, many times**, each on the original frame, minus the harness floor. The floor
//!   (the kernel's timer reads around one run) is `median(pass-through, repeat = 1)` minus
//!   the per-run time of pass-through at a large repeat: pass-through leaves the frame alone,
//!   so it is the one path both ways measure identically. New flows can only be timed this
//!   way (every run needs a new tuple).
//! - **repeat = R on an idempotent flow**: a service whose only backend is its own VIP:port.
//!   Its DNAT rewrites nothing, so every rerun is again an established-flow conntrack hit
//!   (and its reply again a reply-entry hit) that does the full lookup and checksum work.
use std::net::Ipv4Addr;

use lb_agent::model::{
    BackendState, DesiredBackend, DesiredService, Frontend, FrontendKind, Protocol,
};
use lb_testkit::packet::{tcp_ack, tcp_syn};

use crate::datapath::LbDatapath;
use crate::fixture::{BACKEND_PORT, Fixture, SERVICE_PORT};
use crate::stats::{Summary, median, summarize};

/// `TC_ACT_UNSPEC`.
const TC_ACT_UNSPEC: i32 = -1;
/// Frontend (and backend) of the idempotent service.
const SELF_VIP: &str = "10.95.255.1";
/// Frontend of the Maglev service (10 backends, `MAGLEV_BACKEND_NET`.1–10).
const MAGLEV_VIP: &str = "10.95.255.2";
/// Backends of the Maglev service: never answered, only selected.
const MAGLEV_BACKEND_NET: [u8; 3] = [10, 94, 0];
/// The client pod.
const CLIENT: &str = "10.0.1.2";

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Service counts.
    pub sizes: &'static [u32],
    /// Rounds (every size and case once per round).
    pub rounds: usize,
    /// repeat=1 samples per case and round.
    pub samples: usize,
    /// `repeat` of the idempotent runs.
    pub repeat: u32,
}

/// Results at one size, in ns per packet.
#[derive(Clone, Debug, Default)]
pub struct SizeResult {
    /// Services loaded.
    pub services: u32,
    /// Pass-through, repeat=1, floor subtracted.
    pub pass: Summary,
    /// New flow (SYN to the last-inserted service), repeat=1, floor subtracted.
    pub new_flow: Summary,
    /// New flow to a Maglev service (10 backends, M = 16381), repeat=1, floor subtracted.
    pub new_flow_maglev: Summary,
    /// Established flow (ACK of a flow in conntrack), repeat=1, floor subtracted.
    pub established: Summary,
    /// Reply (backend → client of a flow in conntrack), repeat=1, floor subtracted.
    pub reply: Summary,
    /// Pass-through at repeat=R (per run).
    pub pass_repeat: Summary,
    /// Established, idempotent flow, repeat=R (per run).
    pub established_repeat: Summary,
    /// Reply of the idempotent flow, repeat=R (per run).
    pub reply_repeat: Summary,
    /// The harness floor subtracted from the repeat=1 figures.
    pub floor: f64,
}

struct Loaded {
    services: u32,
    datapath: LbDatapath,
    next_flow: u32,
    next_maglev_flow: u32,
    est: Vec<u8>,
    reply: Vec<u8>,
    pass: Vec<u8>,
    self_est: Vec<u8>,
    self_reply: Vec<u8>,
    backend: Ipv4Addr,
}

fn ip_dst(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}

fn ip_src(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29])
}

fn self_service() -> DesiredService {
    let vip: Ipv4Addr = SELF_VIP.parse().expect("constant address");
    DesiredService {
        namespace: "bench".into(),
        name: "idempotent".into(),
        port_name: String::new(),
        frontend: Frontend {
            vip,
            port: SERVICE_PORT,
            protocol: Protocol::Tcp,
        },
        kind: FrontendKind::ClusterIp,
        local_only: false,
        backends: vec![DesiredBackend {
            addr: vip,
            port: SERVICE_PORT,
            state: BackendState::Active,
            remote: false,
        }],
        has_any_endpoints: true,
        affinity_timeout_secs: None,
        algorithm: None,
    }
}

/// A service selecting by Maglev over 10 backends.
fn maglev_service() -> DesiredService {
    let mut service = self_service();
    service.name = "maglev".into();
    service.frontend.vip = MAGLEV_VIP.parse().expect("constant address");
    let [a, b, c] = MAGLEV_BACKEND_NET;
    service.backends = (1..=10)
        .map(|d| DesiredBackend {
            addr: Ipv4Addr::new(a, b, c, d),
            port: BACKEND_PORT,
            state: BackendState::Active,
            remote: false,
        })
        .collect();
    service.algorithm = Some(lb_agent::model::LbAlgorithm::Maglev);
    service
}

fn load(services: u32) -> anyhow::Result<Loaded> {
    let fixture = Fixture {
        services,
        backends: 1,
    };
    let mut datapath = LbDatapath::load(&format!("pkt{services}"))?;
    let mut desired = vec![self_service(), maglev_service()];
    desired.extend(fixture.desired());
    datapath.sync(&desired)?;
    let vip = Fixture::vip(fixture.target());
    let backend = fixture.backend(fixture.target(), 0);
    let client = format!("{CLIENT}:40001");
    let front = format!("{vip}:{SERVICE_PORT}");
    let back = format!("{backend}:{BACKEND_PORT}");
    // Open the established flows: one to the target, one to the idempotent service.
    let syn = datapath.run(&tcp_syn(&client, &front), 1)?;
    anyhow::ensure!(
        syn.verdict == TC_ACT_UNSPEC && ip_dst(&syn.frame) == backend,
        "the SYN to {front} was not DNATed to {back}: verdict {}",
        syn.verdict
    );
    let self_front = format!("{SELF_VIP}:{SERVICE_PORT}");
    let self_client = format!("{CLIENT}:40002");
    let syn = datapath.run(&tcp_syn(&self_client, &self_front), 1)?;
    anyhow::ensure!(
        syn.verdict == TC_ACT_UNSPEC,
        "SYN to the idempotent service"
    );
    Ok(Loaded {
        services,
        next_flow: 0,
        next_maglev_flow: 0,
        est: tcp_ack(&client, &front),
        reply: tcp_ack(&back, &client),
        pass: tcp_ack(
            &format!("{CLIENT}:40003"),
            &format!("10.0.2.2:{BACKEND_PORT}"),
        ),
        self_est: tcp_ack(&self_client, &self_front),
        self_reply: tcp_ack(&self_front, &self_client),
        backend,
        datapath,
    })
}

#[derive(Default)]
struct Rounds {
    pass: Vec<Vec<f64>>,
    new_flow: Vec<Vec<f64>>,
    new_flow_maglev: Vec<Vec<f64>>,
    established: Vec<Vec<f64>>,
    reply: Vec<Vec<f64>>,
    pass_repeat: Vec<Vec<f64>>,
    established_repeat: Vec<Vec<f64>>,
    reply_repeat: Vec<Vec<f64>>,
}

fn ns(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64
}

/// Runs B1: every size loaded at once, then rounds of every size and case, interleaved.
pub fn run(plan: Plan) -> anyhow::Result<Vec<SizeResult>> {
    let mut loaded = Vec::new();
    for &n in plan.sizes {
        eprintln!("lb-bench: per-packet: loading {n} services");
        loaded.push(load(n)?);
    }
    let mut rounds: Vec<Rounds> = plan.sizes.iter().map(|_| Rounds::default()).collect();
    for round in 0..plan.rounds {
        for (l, r) in loaded.iter_mut().zip(&mut rounds) {
            let dp = &l.datapath;
            let sample = |frame: &[u8], check: &dyn Fn(&crate::datapath::Run) -> bool| {
                let mut out = Vec::with_capacity(plan.samples);
                for _ in 0..plan.samples {
                    let run = dp.run(frame, 1)?;
                    anyhow::ensure!(check(&run), "unexpected result of a run: {}", run.verdict);
                    out.push(ns(run.duration));
                }
                Ok::<_, anyhow::Error>(out)
            };
            let backend = l.backend;
            let vip = Fixture::vip(l.services - 1);
            r.pass
                .push(sample(&l.pass, &|run| run.verdict == TC_ACT_UNSPEC)?);
            r.established
                .push(sample(&l.est, &|run| ip_dst(&run.frame) == backend)?);
            r.reply
                .push(sample(&l.reply, &|run| ip_src(&run.frame) == vip)?);
            let repeat = |frame: &[u8]| {
                (0..3)
                    .map(|_| dp.run(frame, plan.repeat).map(|run| ns(run.duration)))
                    .collect::<anyhow::Result<Vec<f64>>>()
            };
            r.pass_repeat.push(repeat(&l.pass)?);
            r.established_repeat.push(repeat(&l.self_est)?);
            r.reply_repeat.push(repeat(&l.self_reply)?);
            let mut new_flow = Vec::with_capacity(plan.samples);
            for _ in 0..plan.samples {
                let k = l.next_flow;
                l.next_flow += 1;
                let src = format!(
                    "10.1.{}.{}:{}",
                    (k / 60_000) % 250,
                    1 + (k / 60_000) / 250,
                    1024 + k % 60_000
                );
                let frame = tcp_syn(&src, &format!("{vip}:{SERVICE_PORT}"));
                let run = dp.run(&frame, 1)?;
                anyhow::ensure!(ip_dst(&run.frame) == backend, "new flow not DNATed");
                new_flow.push(ns(run.duration));
            }
            r.new_flow.push(new_flow);
            let mut new_flow = Vec::with_capacity(plan.samples);
            for _ in 0..plan.samples {
                let k = l.next_maglev_flow;
                l.next_maglev_flow += 1;
                let src = format!(
                    "10.2.{}.{}:{}",
                    (k / 60_000) % 250,
                    1 + (k / 60_000) / 250,
                    1024 + k % 60_000
                );
                let frame = tcp_syn(&src, &format!("{MAGLEV_VIP}:{SERVICE_PORT}"));
                let run = dp.run(&frame, 1)?;
                anyhow::ensure!(
                    run.verdict == TC_ACT_UNSPEC
                        && ip_dst(&run.frame).octets()[..3] == MAGLEV_BACKEND_NET,
                    "new Maglev flow not DNATed"
                );
                new_flow.push(ns(run.duration));
            }
            r.new_flow_maglev.push(new_flow);
        }
        eprintln!(
            "lb-bench: per-packet: round {} of {} done",
            round + 1,
            plan.rounds
        );
    }
    let mut out = Vec::new();
    for (l, r) in loaded.iter().zip(&rounds) {
        let all_pass: Vec<f64> = r.pass.iter().flatten().copied().collect();
        let all_pass_repeat: Vec<f64> = r.pass_repeat.iter().flatten().copied().collect();
        let floor = (median(&all_pass) - median(&all_pass_repeat)).max(0.0);
        let net = |rounds: &[Vec<f64>]| {
            let shifted: Vec<Vec<f64>> = rounds
                .iter()
                .map(|v| v.iter().map(|x| x - floor).collect())
                .collect();
            summarize(&shifted)
        };
        out.push(SizeResult {
            services: l.services,
            pass: net(&r.pass),
            new_flow: net(&r.new_flow),
            new_flow_maglev: net(&r.new_flow_maglev),
            established: net(&r.established),
            reply: net(&r.reply),
            pass_repeat: summarize(&r.pass_repeat),
            established_repeat: summarize(&r.established_repeat),
            reply_repeat: summarize(&r.reply_repeat),
            floor,
        });
    }
    Ok(out)
}
