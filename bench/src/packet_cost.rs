//! B1: per-packet cost of `from_pod` by path, with `BPF_PROG_TEST_RUN`, at several service
//! counts, beside B8: the same harness running an empty program and one doing a single hash
//! lookup (`floor.rs`). Every figure is reported as "floor + n": the empty program's time in
//! the same mode, plus what `from_pod` costs beyond it.
//!
//! `repeat > 1` reruns the program on the buffer the previous run rewrote, so only paths whose
//! rewrite leads back to the same path can be timed that way. Two modes:
//!
//! - **single shot**: `repeat = 1`, many times, each on the original frame. New flows can
//!   only be timed this way (every run needs a new tuple). Each run also pays the kernel's
//!   clock reads and cold caches: the empty program's single-shot time is that floor.
//! - **hot**: `repeat = R`, the kernel's time per run. Pass-through leaves the frame alone.
//!   Established and reply packets do the real rewrite: two services whose only backends are
//!   each other's frontend (A → B, B → A), so that every run's DNAT turns the packet into the
//!   other flow's next packet, which the next run translates back (and likewise for replies).
use std::net::Ipv4Addr;

use lb_agent::model::{
    BackendState, DesiredBackend, DesiredService, Frontend, FrontendKind, Protocol,
};
use lb_testkit::packet::{tcp_ack, tcp_syn};

use crate::datapath::{LB_MAP_MAX, LbDatapath};
use crate::fixture::{BACKEND_PORT, Fixture, SERVICE_PORT};
use crate::floor::FloorProgram;
use crate::stats::{Summary, median, summarize};

/// `TC_ACT_UNSPEC`.
const TC_ACT_UNSPEC: i32 = -1;
/// Frontends of the two services that are each other's backend (A → B, B → A).
const PING: (&str, u16) = ("10.95.255.2", SERVICE_PORT);
const PONG: (&str, u16) = ("10.95.255.3", SERVICE_PORT + 1);
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
    /// `repeat` of the hot runs.
    pub repeat: u32,
}

/// A figure as "floor + n": the empty program's time in the same mode, and what the measured
/// program costs beyond it (summarised over rounds).
#[derive(Clone, Copy, Debug, Default)]
pub struct OverFloor {
    /// The empty program's median in the same mode (ns).
    pub floor: f64,
    /// The measured time minus `floor` (ns).
    pub n: Summary,
}

impl OverFloor {
    /// The whole figure: floor + n (median).
    pub fn total(&self) -> f64 {
        self.floor + self.n.p50
    }
}

/// Results at one size, in ns per packet.
#[derive(Clone, Debug, Default)]
pub struct SizeResult {
    /// Services loaded.
    pub services: u32,
    /// Pass-through, single shot.
    pub pass: OverFloor,
    /// New flow (SYN to the last-inserted service), single shot.
    pub new_flow: OverFloor,
    /// Established flow (ACK of a flow in conntrack, real DNAT), single shot.
    pub established: OverFloor,
    /// Reply (backend → client of a flow in conntrack, real rev-NAT), single shot.
    pub reply: OverFloor,
    /// Pass-through, hot.
    pub pass_repeat: OverFloor,
    /// Established, real rewrite (A → B → A ...), hot.
    pub established_repeat: OverFloor,
    /// Reply, real rewrite, hot.
    pub reply_repeat: OverFloor,
}

/// One B8 floor program in both modes (raw times, ns).
#[derive(Clone, Debug, Default)]
pub struct FloorResult {
    /// What it does.
    pub name: &'static str,
    /// Single shot.
    pub single: Summary,
    /// Hot, per run.
    pub hot: Summary,
}

/// Everything B1 and B8 measured.
#[derive(Clone, Debug, Default)]
pub struct PacketResults {
    /// Per size.
    pub sizes: Vec<SizeResult>,
    /// The floor programs; the first is the empty one.
    pub floors: Vec<FloorResult>,
}

struct Loaded {
    services: u32,
    datapath: LbDatapath,
    next_flow: u32,
    est: Vec<u8>,
    reply: Vec<u8>,
    pass: Vec<u8>,
    ping_est: Vec<u8>,
    ping_reply: Vec<u8>,
    backend: Ipv4Addr,
}

fn ip_dst(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}

fn ip_src(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29])
}

/// A ClusterIP service `frontend` whose only backend is `backend`.
fn one_backend(name: &str, frontend: (&str, u16), backend: (&str, u16)) -> DesiredService {
    let addr = |a: &str| a.parse::<Ipv4Addr>().expect("constant address");
    DesiredService {
        namespace: "bench".into(),
        name: name.into(),
        port_name: String::new(),
        frontend: Frontend {
            vip: addr(frontend.0).into(),
            port: frontend.1,
            protocol: Protocol::Tcp,
        },
        kind: FrontendKind::ClusterIp,
        local_only: false,
        backends: vec![DesiredBackend {
            addr: addr(backend.0).into(),
            port: backend.1,
            state: BackendState::Active,
            remote: false,
        }],
        has_any_endpoints: true,
        affinity_timeout_secs: None,
        source_ranges: None,
        algorithm: None,
    }
}

/// Capacity of the services and backends maps for `services` services of one backend: three
/// entries each (master, wildcard, slot), with room to spare.
fn map_max(services: u32) -> u32 {
    (services.saturating_mul(3) + 16)
        .next_power_of_two()
        .max(LB_MAP_MAX)
}

fn load(services: u32) -> anyhow::Result<Loaded> {
    let fixture = Fixture {
        services,
        backends: 1,
    };
    let mut datapath = LbDatapath::load_sized(&format!("pkt{services}"), map_max(services))?;
    let mut desired = vec![
        one_backend("ping", PING, PONG),
        one_backend("pong", PONG, PING),
    ];
    desired.extend(fixture.desired());
    datapath.sync(&desired)?;
    let vip = Fixture::vip(fixture.target());
    let backend = fixture.backend(fixture.target(), 0);
    let client = format!("{CLIENT}:40001");
    let front = format!("{vip}:{SERVICE_PORT}");
    let back = format!("{backend}:{BACKEND_PORT}");
    // Open the established flows: one to the target, and one to each of ping and pong from
    // the same client port.
    let syn = datapath.run(&tcp_syn(&client, &front), 1)?;
    anyhow::ensure!(
        syn.verdict == TC_ACT_UNSPEC && ip_dst(&syn.frame) == backend,
        "the SYN to {front} was not DNATed to {back}: verdict {}",
        syn.verdict
    );
    let ping_client = format!("{CLIENT}:40002");
    let ping = format!("{}:{}", PING.0, PING.1);
    let pong = format!("{}:{}", PONG.0, PONG.1);
    for (to, expect) in [(&ping, &pong), (&pong, &ping)] {
        let syn = datapath.run(&tcp_syn(&ping_client, to), 1)?;
        anyhow::ensure!(
            syn.frame == tcp_syn(&ping_client, expect),
            "the SYN to {to} was not DNATed to {expect}: verdict {}",
            syn.verdict
        );
    }
    // The handshake's replies and ACKs, so that the flows are established as in real life.
    let reply = tcp_ack(&back, &client);
    datapath.run(&reply, 1)?;
    datapath.run(&tcp_ack(&client, &front), 1)?;
    for (to, back) in [(&ping, &pong), (&pong, &ping)] {
        let run = datapath.run(&tcp_ack(back, &ping_client), 1)?;
        anyhow::ensure!(
            run.frame == tcp_ack(to, &ping_client),
            "the reply from {back} was not restored to {to}"
        );
        datapath.run(&tcp_ack(&ping_client, to), 1)?;
    }
    Ok(Loaded {
        services,
        next_flow: 0,
        est: tcp_ack(&client, &front),
        reply,
        pass: tcp_ack(
            &format!("{CLIENT}:40003"),
            &format!("10.0.2.2:{BACKEND_PORT}"),
        ),
        ping_est: tcp_ack(&ping_client, &ping),
        ping_reply: tcp_ack(&pong, &ping_client),
        backend,
        datapath,
    })
}

#[derive(Default)]
struct Rounds {
    pass: Vec<Vec<f64>>,
    new_flow: Vec<Vec<f64>>,
    established: Vec<Vec<f64>>,
    reply: Vec<Vec<f64>>,
    pass_repeat: Vec<Vec<f64>>,
    established_repeat: Vec<Vec<f64>>,
    reply_repeat: Vec<Vec<f64>>,
}

#[derive(Default)]
struct FloorRounds {
    single: Vec<Vec<f64>>,
    hot: Vec<Vec<f64>>,
}

fn ns(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64
}

/// Runs B1 and B8: every size loaded at once, then rounds of every size and case and the
/// floor programs, interleaved.
pub fn run(plan: Plan) -> anyhow::Result<PacketResults> {
    let floors = FloorProgram::all()?;
    let mut loaded = Vec::new();
    for &n in plan.sizes {
        eprintln!("lb-bench: per-packet: loading {n} services");
        loaded.push(load(n)?);
    }
    let mut rounds: Vec<Rounds> = plan.sizes.iter().map(|_| Rounds::default()).collect();
    let mut floor_rounds: Vec<FloorRounds> =
        floors.iter().map(|_| FloorRounds::default()).collect();
    for round in 0..plan.rounds {
        for (l, r) in loaded.iter_mut().zip(&mut rounds) {
            // The floors beside every size, on the same frame as pass-through.
            for (program, fr) in floors.iter().zip(&mut floor_rounds) {
                let single = (0..plan.samples)
                    .map(|_| program.run(&l.pass, 1).map(ns))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                fr.single.push(single);
                let hot = (0..3)
                    .map(|_| program.run(&l.pass, plan.repeat).map(ns))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                fr.hot.push(hot);
            }
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
            // An even repeat count brings a ping-pong frame back to where it started.
            let repeat = |frame: &[u8]| {
                (0..3)
                    .map(|_| {
                        let run = dp.run(frame, plan.repeat & !1)?;
                        anyhow::ensure!(run.frame == frame, "a hot run changed its case");
                        Ok(ns(run.duration))
                    })
                    .collect::<anyhow::Result<Vec<f64>>>()
            };
            r.pass_repeat.push(repeat(&l.pass)?);
            r.established_repeat.push(repeat(&l.ping_est)?);
            r.reply_repeat.push(repeat(&l.ping_reply)?);
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
        }
        eprintln!(
            "lb-bench: per-packet: round {} of {} done",
            round + 1,
            plan.rounds
        );
    }
    let floor_results: Vec<FloorResult> = floors
        .iter()
        .zip(&floor_rounds)
        .map(|(program, fr)| FloorResult {
            name: program.name,
            single: summarize(&fr.single),
            hot: summarize(&fr.hot),
        })
        .collect();
    let empty = &floor_rounds[0];
    let flat = |rounds: &[Vec<f64>]| rounds.iter().flatten().copied().collect::<Vec<f64>>();
    let single_floor = median(&flat(&empty.single));
    let hot_floor = median(&flat(&empty.hot));
    let over = |floor: f64, rounds: &[Vec<f64>]| {
        let shifted: Vec<Vec<f64>> = rounds
            .iter()
            .map(|v| v.iter().map(|x| x - floor).collect())
            .collect();
        OverFloor {
            floor,
            n: summarize(&shifted),
        }
    };
    let sizes = loaded
        .iter()
        .zip(&rounds)
        .map(|(l, r)| SizeResult {
            services: l.services,
            pass: over(single_floor, &r.pass),
            new_flow: over(single_floor, &r.new_flow),
            established: over(single_floor, &r.established),
            reply: over(single_floor, &r.reply),
            pass_repeat: over(hot_floor, &r.pass_repeat),
            established_repeat: over(hot_floor, &r.established_repeat),
            reply_repeat: over(hot_floor, &r.reply_repeat),
        })
        .collect();
    Ok(PacketResults {
        sizes,
        floors: floor_results,
    })
}
