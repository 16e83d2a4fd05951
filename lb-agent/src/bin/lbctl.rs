//! `lbctl`: parse, run, exit code. Everything else is in `lb_agent::cli`.

use std::process::ExitCode;

use clap::Parser;
use lb_agent::cli;

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
