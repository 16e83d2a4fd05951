//! # lbctl
//!
//! The operator's CLI for lb-agent, in the spirit of `cilium service list` and `cilium
//! monitor`: `status`, `service list`, `monitor --type drop`, `config view|set`. This file
//! parses, runs and picks the exit code; `cli/` holds one module per verb, `output.rs` the
//! table and JSON layouts, and `lb_api` the protocol and client.
//!
//! It depends on lb-api and never on lb-agent, so `cargo install --path lbctl` needs stable
//! cargo alone.

mod cli;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::run(cli::Args::parse()) {
        Ok(code) => code,
        Err(err) if cli::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // anyhow prints the chain of sources with `{:#}`: "cannot connect to lb-agent at
            // /var/run/lb/lb.sock: No such file or directory (os error 2)".
            eprintln!("lbctl: {:#}", anyhow::Error::from(err));
            ExitCode::from(2)
        }
    }
}
