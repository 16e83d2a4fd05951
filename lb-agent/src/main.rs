//! `lb-agent`: parse the configuration, start telemetry, run the agent until SIGTERM/SIGINT
//! (or, with `--uninstall`, remove what lb installed and exit).
use std::process::ExitCode;

use lb_agent::{
    config::{Action, AgentConfig},
    telemetry, uninstall,
};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    one_malloc_arena();
    let resolved = match AgentConfig::parse() {
        Ok(resolved) => resolved,
        Err(err) => {
            eprintln!("lb-agent: {:#}", anyhow::Error::from(err));
            return ExitCode::from(2);
        }
    };
    let (config, action) = (resolved.config, resolved.action);
    telemetry::init(config.log_level);
    for warning in &resolved.warnings {
        tracing::warn!("{warning}");
    }
    if action == Action::Uninstall {
        return match uninstall::uninstall(&config.bpf_root, &config.socket) {
            Ok(report) => {
                tracing::info!(
                    links = report.links.len(),
                    pins = report.pins.len(),
                    version_dirs = report.version_dirs.len(),
                    bpf_root_removed = report.root_removed,
                    socket_removed = report.socket_removed,
                    "lb uninstalled"
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!(error = %format!("{:#}", anyhow::Error::from(err)), "uninstall failed");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lb-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        lb_agent::agent::run_with_sources(config, resolved.sources, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{:#}", anyhow::Error::from(err)), "lb-agent failed");
            ExitCode::FAILURE
        }
    }
}

/// Makes glibc's malloc keep one arena for every thread, unless `MALLOC_ARENA_MAX` says
/// otherwise. By default each thread that allocates may get its own (up to eight per core),
/// each with its own free pages and fragments: at 10k Services the agent's RSS is a quarter
/// lower with one. The agent allocates little at once on several threads (one sync loop),
/// so sharing the arena's lock costs nothing measurable.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first in main, before any other thread exists; mallopt only sets a
        // malloc parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
