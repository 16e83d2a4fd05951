//! `lb-bench`: lb side by side with kube-proxy's iptables and nftables rule sets and the
//! kernel's floor, on this machine. One invocation runs every benchmark, variants interleaved
//! within rounds, and writes `benchmarks.md` and `benchmarks.svg` to `--out` (default `docs/`).
//!
//! ```text
//! lb-bench [--quick] [--out DIR] [--only packet,sync,change,traffic,forwarding,maglev,memory]
//! ```
//!
//! `--quick` runs tiny sizes as a smoke test (CI): it checks that every path works and asserts
//! nothing about speed. Needs root (BPF, namespaces, iptables, nft). All traffic stays inside
//! namespaces named `lbbench-<pid>-*`, removed at the end.
mod alloc;
mod control;
mod datapath;
mod fixture;
mod floor;
mod forwarding;
mod memory;
mod netns;
mod packet_cost;
mod report;
mod stats;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fixture::Fixture;
use stats::summarize;
use traffic::{Chain, Variant};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Sizes and repetitions of one run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `--quick`.
    pub quick: bool,
    /// Service counts for B1–B3.
    pub sizes: &'static [u32],
    /// Rounds of every interleaved measurement.
    pub rounds: usize,
    /// Connect latencies per variant and round.
    pub connects: usize,
    /// Length of one connection-rate measurement.
    pub rate_for: Duration,
    /// Fixtures for B5.
    pub sync_fixtures: &'static [Fixture],
    /// Rounds of B5.
    pub sync_rounds: usize,
    /// Services loaded for B6, one run each (the baselines only up to `control::BIG`).
    pub change_services: &'static [u32],
    /// lb changes in B6.
    pub lb_changes: usize,
    /// Changes of each baseline in B6.
    pub rule_changes: usize,
    /// B1 plan.
    pub packet: packet_cost::Plan,
    /// B4 plan.
    pub forwarding: forwarding::Plan,
    /// B9: the fixtures whose Maglev tables are built, and how many services of each go
    /// through a kernel sync pass.
    pub maglev: &'static [(Fixture, u32)],
    /// B7: the fixture the release agent's RSS is measured on.
    pub memory: Fixture,
}

const FULL: Config = Config {
    quick: false,
    sizes: &[1, 1_000, 10_000, 30_000],
    rounds: 7,
    connects: 1_500,
    rate_for: Duration::from_millis(700),
    sync_fixtures: &[
        Fixture {
            services: 1,
            backends: 1,
        },
        Fixture {
            services: 1_000,
            backends: 1,
        },
        Fixture {
            services: 10_000,
            backends: 1,
        },
        Fixture {
            services: 30_000,
            backends: 1,
        },
        Fixture {
            services: 10_000,
            backends: 10,
        },
        Fixture {
            services: 100_000,
            backends: 10,
        },
    ],
    sync_rounds: 3,
    change_services: &[10_000, 100_000],
    lb_changes: 200,
    rule_changes: 20,
    packet: packet_cost::Plan {
        sizes: &[1, 1_000, 10_000, 30_000, 100_000],
        rounds: 7,
        samples: 3_000,
        repeat: 100_000,
    },
    forwarding: forwarding::Plan {
        sizes: &[1, 10_000],
        rounds: 5,
        send_for: Duration::from_secs(1),
        tcp_rounds: 3,
        iperf_length: &["-t", "5"],
    },
    maglev: &[
        (
            Fixture {
                services: 10_000,
                backends: 1,
            },
            1_000,
        ),
        (
            Fixture {
                services: 10_000,
                backends: 10,
            },
            1_000,
        ),
    ],
    memory: Fixture {
        services: 10_000,
        backends: 10,
    },
};

const QUICK: Config = Config {
    quick: true,
    sizes: &[1, 100],
    rounds: 2,
    connects: 100,
    rate_for: Duration::from_millis(200),
    sync_fixtures: &[
        Fixture {
            services: 1,
            backends: 1,
        },
        Fixture {
            services: 100,
            backends: 1,
        },
        Fixture {
            services: 100,
            backends: 4,
        },
    ],
    sync_rounds: 1,
    change_services: &[100],
    lb_changes: 20,
    rule_changes: 2,
    packet: packet_cost::Plan {
        sizes: &[1, 100],
        rounds: 2,
        samples: 200,
        repeat: 1_000,
    },
    forwarding: forwarding::Plan {
        sizes: &[1],
        rounds: 1,
        send_for: Duration::from_millis(100),
        tcp_rounds: 1,
        iperf_length: &["-n", "20M"],
    },
    maglev: &[(
        Fixture {
            services: 100,
            backends: 4,
        },
        20,
    )],
    memory: Fixture {
        services: 100,
        backends: 10,
    },
};

/// Connect results for one size and variant.
#[derive(Clone, Debug)]
pub struct TrafficResult {
    /// Services loaded.
    pub services: u32,
    /// The variant.
    pub variant: Variant,
    /// Connect latency in µs.
    pub latency: stats::Summary,
    /// New connections per second.
    pub rate: stats::Summary,
    /// Connections attempted that failed.
    pub failed: usize,
    /// Connections whose SYN was retransmitted (took ≥ 0.9 s).
    pub retransmitted: usize,
}

fn traffic(config: &Config) -> anyhow::Result<Vec<TrafficResult>> {
    let mut out = Vec::new();
    for &n in config.sizes {
        let fixture = Fixture {
            services: n,
            backends: 1,
        };
        eprintln!("lb-bench: traffic: building 4 chains with {n} services");
        let mut chains = Vec::new();
        for (k, variant) in Variant::ALL.into_iter().enumerate() {
            chains.push(Chain::build(variant, fixture, &format!("t{k}"))?);
        }
        let mut lat: Vec<Vec<Vec<f64>>> = vec![Vec::new(); chains.len()];
        let mut rate: Vec<Vec<Vec<f64>>> = vec![Vec::new(); chains.len()];
        let mut failed = vec![0usize; chains.len()];
        let mut slow = vec![0usize; chains.len()];
        for round in 0..config.rounds {
            // Rotate the order each round so no variant always runs first.
            for step in 0..chains.len() {
                let k = (step + round) % chains.len();
                let samples = chains[k].latencies(config.connects)?;
                failed[k] += config.connects - samples.len();
                let limit = traffic::RETRANSMITTED.as_secs_f64() * 1e6;
                slow[k] += samples.iter().filter(|us| **us >= limit).count();
                lat[k].push(samples);
                let (per_sec, retransmitted) = chains[k].rate(config.rate_for)?;
                slow[k] += retransmitted;
                rate[k].push(vec![per_sec]);
            }
        }
        for (k, chain) in chains.iter().enumerate() {
            out.push(TrafficResult {
                services: n,
                variant: chain.variant,
                latency: summarize(&lat[k]),
                rate: summarize(&rate[k]),
                failed: failed[k],
                retransmitted: slow[k],
            });
        }
        let line: Vec<String> = out
            .iter()
            .filter(|r| r.services == n)
            .map(|r| {
                format!(
                    "{} p50 {:.1} µs, {:.0} conn/s, {} retransmitted",
                    r.variant.name(),
                    r.latency.p50,
                    r.rate.p50,
                    r.retransmitted
                )
            })
            .collect();
        eprintln!("lb-bench: traffic {n}: {}", line.join("; "));
    }
    Ok(out)
}

/// Everything one run measured.
pub struct Results {
    /// The configuration.
    pub config: Config,
    /// Machine facts.
    pub machine: report::Machine,
    /// B1 and B8.
    pub packet: packet_cost::PacketResults,
    /// B2/B3.
    pub traffic: Vec<TrafficResult>,
    /// B4.
    pub forwarding: forwarding::Forwarding,
    /// B5.
    pub sync: Vec<control::SyncResult>,
    /// B6.
    pub change: Vec<control::ChangeResult>,
    /// B7.
    pub maps: control::MapMemory,
    /// B9.
    pub maglev: Vec<control::MaglevResult>,
    /// B7: the agent's RSS and heap breakdown.
    pub agent_memory: Option<memory::AgentMemory>,
    /// Peak RSS of the bench process (kB).
    pub vm_hwm_kb: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// The parts of the suite, for `--only` (development: the report then has gaps).
const PARTS: [&str; 7] = [
    "packet",
    "sync",
    "change",
    "traffic",
    "forwarding",
    "maglev",
    "memory",
];

fn run(config: Config, only: &[String], out: &std::path::Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let want = |part: &str| only.is_empty() || only.iter().any(|p| p == part);
    netns::clean_stale();
    traffic::raise_priority();
    let machine = report::Machine::probe(config.quick);
    eprintln!("lb-bench: {machine:?}");
    let packet = if want("packet") {
        packet_cost::run(config.packet)?
    } else {
        packet_cost::PacketResults::default()
    };
    let maps = control::map_memory()?;
    let sync = if want("sync") {
        control::programming(config.sync_fixtures, config.sync_rounds)?
    } else {
        Vec::new()
    };
    let mut change = Vec::new();
    if want("change") {
        for &services in config.change_services {
            let rule_changes = if services <= control::BIG {
                config.rule_changes
            } else {
                0
            };
            change.push(control::endpoint_change(
                Fixture {
                    services,
                    backends: 1,
                },
                config.lb_changes,
                rule_changes,
            )?);
        }
    }
    let maglev = if want("maglev") {
        config
            .maglev
            .iter()
            .map(|&(fixture, kernel)| control::maglev_tables(fixture, kernel))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let agent_memory = if want("memory") {
        Some(memory::agent_memory(config.memory)?)
    } else {
        None
    };
    let traffic = if want("traffic") {
        traffic(&config)?
    } else {
        Vec::new()
    };
    let forwarding = if want("forwarding") {
        forwarding::run(&config.forwarding)?
    } else {
        forwarding::Forwarding::default()
    };
    let mut machine = machine;
    machine.load_after = report::loadavg();
    let results = Results {
        config,
        machine,
        packet,
        traffic,
        forwarding,
        sync,
        change,
        maps,
        maglev,
        agent_memory,
        vm_hwm_kb: alloc::proc_status_kb("VmHWM"),
        elapsed: started.elapsed(),
    };
    std::fs::create_dir_all(out)?;
    let md = report::markdown(&results);
    let svg = report::svg(&results);
    std::fs::write(out.join("benchmarks.md"), md)?;
    std::fs::write(out.join("benchmarks.svg"), svg)?;
    eprintln!(
        "lb-bench: wrote {} and {} in {:.0} s",
        out.join("benchmarks.md").display(),
        out.join("benchmarks.svg").display(),
        results.elapsed.as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut out = None;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => out = args.next().map(PathBuf::from),
            "--only" => {
                only = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    eprintln!(
                        "lb-bench: unknown part {bad:?}: one of {}",
                        PARTS.join(", ")
                    );
                    return ExitCode::FAILURE;
                }
            }
            "-h" | "--help" => {
                println!(
                    "lb-bench [--quick] [--out DIR] [--only packet,sync,change,traffic,forwarding,maglev,memory]"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("lb-bench: unknown argument {other:?} (try --help)");
                return ExitCode::FAILURE;
            }
        }
    }
    let out = out.unwrap_or_else(|| PathBuf::from("docs"));
    let config = if quick { QUICK } else { FULL };
    match run(config, &only, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lb-bench: {err:#}");
            netns::clean_stale();
            ExitCode::FAILURE
        }
    }
}
