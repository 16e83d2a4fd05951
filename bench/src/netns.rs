//! The benchmarks' namespaces: every one is named with [`PREFIX`], apart from the lab's
//! `lblab-` and the tests' `lbtr-`, so that neither suite's clean-up touches the other's; and
//! commands timed from spawn to exit, as kube-proxy pays for its rule loads. Namespaces
//! themselves are `lb_testkit`'s.
use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lb_testkit::Netns;
pub use lb_testkit::run_host as host;

/// Prefix of every namespace the benchmarks create.
pub const PREFIX: &str = "lbbench-";

/// Creates `lbbench-<pid>-<short>` (replacing a stale one) with `lo` up. The process id keeps
/// two runs at once (a developer's and CI's, or two worktrees') out of each other's way.
pub fn create(short: &str) -> anyhow::Result<Netns> {
    Ok(Netns::create(&format!(
        "{PREFIX}{}-{short}",
        std::process::id()
    ))?)
}

/// Runs `program args` inside `ns` (network namespace only), stdin from `input`; returns how
/// long the process took from spawn to exit.
pub fn run_timed(
    ns: &Netns,
    program: &str,
    args: &[&str],
    input: Option<&Path>,
) -> anyhow::Result<Duration> {
    let mut cmd = ns.command(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    match input {
        Some(path) => {
            cmd.stdin(File::open(path).with_context(|| format!("open {}", path.display()))?)
        }
        None => cmd.stdin(Stdio::null()),
    };
    let started = Instant::now();
    let output = cmd
        .output()
        .with_context(|| format!("run {program} in {}", ns.name()))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{program} {} in {}: {}: {}",
            args.join(" "),
            ns.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// Removes the namespaces of runs that are gone (crashed) and this run's own; another live
/// run's namespaces stay.
pub fn clean_stale() {
    let names = match lb_testkit::netns::list(PREFIX) {
        Ok(names) => names,
        Err(err) => {
            eprintln!("lb-bench: cannot list stale namespaces: {err}");
            return;
        }
    };
    for name in names.iter().filter(|name| !owned_by_another_run(name)) {
        if let Err(err) = lb_testkit::netns::remove(name) {
            eprintln!("lb-bench: cannot remove stale namespace {name}: {err}");
        }
    }
}

/// Whether `lbbench-<pid>-…` belongs to a live process other than this one.
fn owned_by_another_run(name: &str) -> bool {
    let owner = name
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    owner
        .is_some_and(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_live_other_run_keeps_its_namespaces_from_the_clean_up() {
        assert!(owned_by_another_run("lbbench-1-t0-c"), "pid 1 is alive");
        let own = format!("lbbench-{}-t0-c", std::process::id());
        assert!(!owned_by_another_run(&own), "this run's own");
        assert!(
            !owned_by_another_run("lbbench-4000000000-t0-c"),
            "beyond pid_max: gone"
        );
        assert!(
            !owned_by_another_run("lbbench-t0-c"),
            "the old naming has no owner"
        );
    }
}
