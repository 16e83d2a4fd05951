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

/// Creates `lbbench-<short>` (replacing a stale one) with `lo` up.
pub fn create(short: &str) -> anyhow::Result<Netns> {
    Ok(Netns::create(&format!("{PREFIX}{short}"))?)
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

/// Removes namespaces a crashed run left behind.
pub fn clean_stale() {
    if let Err(err) = lb_testkit::netns::remove_all(PREFIX) {
        eprintln!("lb-bench: cannot remove stale namespaces: {err}");
    }
}
