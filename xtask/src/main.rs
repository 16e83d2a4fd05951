//! `cargo xtask`: the project's tasks. `setup` installs what a fresh machine lacks; `demo` runs
//! the lab; `ci` is what `.ci/run` calls.
//!
//! xtask deliberately depends on nothing that builds the eBPF object, so `cargo xtask setup`
//! works on a machine that has no bpf-linker yet.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Run every check: fmt, clippy (host and eBPF), and all tests (needs root).
    Test,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Setup => setup::run(),
        Command::Test => setup::run().and_then(|()| test::run()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}
