//! `cargo xtask`: the project's tasks. `setup` installs what a fresh machine lacks; `demo` runs
//! the lab; `image` builds the container image with podman; `bench` measures lb against kube-proxy's rule sets; `ci` is what `.ci/run` calls.
//!
//! xtask deliberately depends on nothing that builds the eBPF object, so `cargo xtask setup`
//! works on a machine that has no bpf-linker yet.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod image;
mod setup;
mod test;

#[derive(Parser)]
#[command(about = "lb's project tasks")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces and packages lb needs (idempotent).
    Setup,
    /// Replay the story in the lab: build, set up namespaces, BGP and agents, run each step.
    Demo {
        /// Leave the lab running afterwards (`cargo xtask demo down` removes it).
        #[arg(long)]
        keep: bool,
        /// Build the lab dual-stack and, after the story, replay its ClusterIP steps over
        /// IPv6 (curl -6 → drop → toggle → 200).
        #[arg(long)]
        ipv6: bool,
        #[command(subcommand)]
        action: Option<DemoAction>,
    },
    /// Build the container image with podman from the Dockerfile, on a Debian 12 base made
    /// with debootstrap (no registry needed; the base is cached); prints the image's tag.
    Image(image::Options),
    /// Run every check: fmt, clippy (host and eBPF), and all tests (needs root).
    Test,
    /// Benchmark lb against kube-proxy's iptables and nftables rule sets; writes
    /// docs/benchmarks.md and docs/benchmarks.svg (needs root; about ten minutes).
    Bench {
        /// Tiny sizes, a smoke test for CI: asserts nothing about speed, writes to
        /// target/bench-quick/.
        #[arg(long)]
        quick: bool,
        /// Only these parts, comma-separated (packet, sync, change, traffic, forwarding,
        /// maglev, memory); the report then has gaps, so it goes to target/bench-only/.
        #[arg(long)]
        only: Option<String>,
    },
}

#[derive(Subcommand)]
enum DemoAction {
    /// Remove a lab left running by `--keep` or by a crashed run.
    Down,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Setup => setup::run(),
        Command::Demo {
            action: Some(DemoAction::Down),
            ..
        } => demo::down(),
        Command::Demo {
            keep,
            ipv6,
            action: None,
        } => demo::run(keep, ipv6),
        Command::Image(options) => image::run(&options),
        Command::Test => setup::run().and_then(|()| test::run()),
        Command::Bench { quick, only } => bench::run(quick, only.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}
