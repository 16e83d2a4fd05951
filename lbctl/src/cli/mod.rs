//! `lbctl`'s commands: argument parsing, and one module per verb (`completion` is here). Every command goes
//! through `lb_api::client`; data goes to stdout (a table or `-o json`, laid out by
//! `output.rs`), errors to stderr as `lbctl: …` (printed by `main.rs`).
//!
//! Exit codes: 0 success; 1 `status` found the agent not ready; 2 any error (cannot connect,
//! agent refused the request, bad arguments). A closed stdout (`lbctl … | head`) is success.

pub mod bpf;
pub mod config;
pub mod monitor;
pub mod service;
pub mod status;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use lb_api::client::{self, Client};

use crate::output::Format;

/// lbctl's arguments.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, about = "Inspect and steer lb-agent")]
pub struct Args {
    /// The agent's API socket.
    #[arg(
        long,
        global = true,
        env = "LB_SOCKET",
        default_value = "/var/run/lb/lb.sock"
    )]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// lbctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the agent's state; exit 0 once the datapath is loaded and the first sync is done.
    Status {
        /// Output format (default: a table of fields).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Services and their backends.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Stream datapath events.
    Monitor {
        /// Which events.
        #[arg(long = "type", value_enum, default_value = "drop")]
        kind: MonitorType,
        /// Output format (default: Cilium's text line).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// The agent's options.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (e.g. `lbctl completion bash > /etc/bash_completion.d/lbctl`).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The datapath's maps.
    #[command(subcommand)]
    Bpf(BpfCommand),
}

/// `lbctl bpf …`.
#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// Conntrack.
    #[command(subcommand)]
    Ct(CtCommand),
    /// The services map.
    #[command(subcommand)]
    Lb(LbCommand),
}

/// `lbctl bpf lb …`.
#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// List every entry of the services map: each frontend's master entry and slots.
    #[command(alias = "ls")]
    List {
        /// Output format (default: Cilium's table).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
}

/// `lbctl bpf ct …`.
#[derive(Debug, Subcommand)]
pub enum CtCommand {
    /// List every conntrack entry, one per line.
    #[command(alias = "ls")]
    List {
        /// Output format (default: one line per entry).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
}

/// `lbctl service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List services with their backends.
    #[command(alias = "ls")]
    List {
        /// Output format (default: a table).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// One service, by the id `service list` shows (as `cilium service get`).
    Get {
        /// The service id.
        id: u32,
        /// Output format (default: a table).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
}

/// `lbctl config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every option, its value in effect and where it comes from (flag, env,
    /// config-dir, default); warn where a flag or variable overrides the config directory.
    View {
        /// Output format (default: `key   value   source` lines).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Change a live option now and persist it (to --config-dir, or the ConfigMap in a
    /// cluster); prints what was done.
    Set {
        /// The option, e.g. `bpf-lb-external-clusterip`.
        key: String,
        /// Its new value.
        value: String,
    },
}

/// `monitor --type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MonitorType {
    /// Dropped packets.
    Drop,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the agent failed, or the agent refused.
    #[error(transparent)]
    Api(#[from] client::Error),
    /// Writing the output failed (a closed pipe is handled by [`is_broken_pipe`]).
    #[error("cannot write to stdout")]
    Stdout(#[source] io::Error),
    /// The agent ended a monitor stream (it is shutting down).
    #[error("lb-agent ended the event stream")]
    StreamEnded,
}

/// Whether `err` is stdout closing under us, which is how `| head` ends a command: success.
pub fn is_broken_pipe(err: &Error) -> bool {
    matches!(err, Error::Stdout(io) if io.kind() == io::ErrorKind::BrokenPipe)
}

/// Runs one command, writing data to stdout.
pub fn run(args: Args) -> Result<ExitCode, Error> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    run_with(args, &mut out)
}

fn write_all(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Stdout)
}

/// Runs one command, writing data to `out`.
pub fn run_with(args: Args, out: &mut dyn Write) -> Result<ExitCode, Error> {
    if let Command::Completion { shell } = args.command {
        // Needs no agent.
        write_all(out, &completion(shell))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = Client::connect(&args.socket)?;
    match args.command {
        Command::Status { output } => {
            let status = client.status()?;
            let text = match output {
                Some(Format::Json) => status::json(&status),
                None => status::summary(&status),
            };
            write_all(out, &text)?;
            if let Some(reason) = status.not_ready_reason() {
                eprintln!("lbctl: lb-agent is not ready: {reason}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Service(ServiceCommand::List { output }) => {
            let services = client.services()?;
            let text = match output {
                Some(Format::Json) => service::json(&services),
                None => service::table(&services),
            };
            write_all(out, &text)?;
        }
        Command::Service(ServiceCommand::Get { id, output }) => {
            let services: Vec<_> = client
                .services()?
                .into_iter()
                .filter(|service| service.id == id)
                .collect();
            if services.is_empty() {
                eprintln!("lbctl: no service with id {id} (see `lbctl service list`)");
                return Ok(ExitCode::FAILURE);
            }
            let text = match output {
                Some(Format::Json) => service::json(&services),
                None => service::table(&services),
            };
            write_all(out, &text)?;
        }
        Command::Monitor {
            kind: MonitorType::Drop,
            output,
        } => monitor::drops(client, output, out)?,
        Command::Config(ConfigCommand::View { output }) => {
            let entries = client.config_view()?;
            let text = match output {
                Some(Format::Json) => config::json(&entries),
                None => config::view(&entries),
            };
            write_all(out, &text)?;
            for warning in config::warnings(&entries) {
                eprintln!("lbctl: warning: {warning}");
            }
        }
        Command::Config(ConfigCommand::Set { key, value }) => {
            let outcome = client.config_set(&key, &value)?;
            if !outcome.is_empty() {
                write_all(out, &format!("{outcome}\n"))?;
            }
        }
        Command::Bpf(BpfCommand::Ct(CtCommand::List { output })) => {
            let entries = client.ct_list()?;
            let text = match output {
                Some(Format::Json) => bpf::json(&entries),
                None => bpf::lines(&entries),
            };
            write_all(out, &text)?;
        }
        Command::Bpf(BpfCommand::Lb(LbCommand::List { output })) => {
            let entries = client.lb_list()?;
            let text = match output {
                Some(Format::Json) => bpf::lb_json(&entries),
                None => bpf::lb_table(&entries),
            };
            write_all(out, &text)?;
        }
        Command::Completion { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The completion script of `shell` for lbctl.
pub fn completion(shell: clap_complete::Shell) -> String {
    let mut command = <Args as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "lbctl", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        Args::command_for_test().debug_assert();
        let args = Args::try_parse_from([
            "lbctl",
            "--socket",
            "/tmp/x.sock",
            "service",
            "list",
            "-o",
            "json",
        ])
        .expect("parse");
        assert_eq!(args.socket, PathBuf::from("/tmp/x.sock"));
        assert!(matches!(
            args.command,
            Command::Service(ServiceCommand::List {
                output: Some(Format::Json)
            })
        ));
        let args = Args::try_parse_from(["lbctl", "monitor", "--type", "drop"]).expect("parse");
        assert!(matches!(
            args.command,
            Command::Monitor { output: None, .. }
        ));
        assert!(Args::try_parse_from(["lbctl", "monitor", "--type", "trace"]).is_err());
    }

    impl Args {
        fn command_for_test() -> clap::Command {
            <Self as clap::CommandFactory>::command()
        }
    }

    #[test]
    fn completion_scripts_name_the_verbs_and_need_no_agent() {
        for shell in ["bash", "zsh", "fish"] {
            let args =
                Args::try_parse_from(["lbctl", "--socket", "/nonexistent", "completion", shell])
                    .expect("parse");
            let mut out = Vec::new();
            let code = run_with(args, &mut out).expect("no agent needed");
            assert_eq!(code, ExitCode::SUCCESS);
            let script = String::from_utf8(out).expect("utf-8");
            for verb in ["status", "service", "monitor", "config", "completion"] {
                assert!(script.contains(verb), "{shell} completes {verb}");
            }
        }
        assert!(Args::try_parse_from(["lbctl", "completion", "tcsh"]).is_err());
    }

    #[test]
    fn a_closed_pipe_is_success_other_write_errors_are_not() {
        let pipe = Error::Stdout(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&pipe));
        let full = Error::Stdout(io::Error::from(io::ErrorKind::StorageFull));
        assert!(!is_broken_pipe(&full));
    }
}
