//! `cargo xtask test`: formatting, lints (host and eBPF), the benchmarks' smoke run and every
//! test, as CI runs them.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::setup::run_cmd;

/// Runs the checks in order, stopping at the first failure.
pub fn run() -> anyhow::Result<()> {
    run_cmd(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run_cmd(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The programs only exist for the BPF target: lint them there, or clippy sees the host stub.
    run_cmd(
        Command::new("cargo")
            .current_dir("lb-ebpf")
            .args([
                "+nightly",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Zbuild-std=core",
            ])
            .args([
                "--",
                "-D",
                "warnings",
                "-C",
                "panic=abort",
                "-Zpanic_abort_tests",
            ]),
    )?;
    // The benchmark suite's smoke test: tiny sizes, nothing asserted about speed. Before the
    // tests, so that the run closes on their summary.
    crate::bench::run(true, None)?;
    // Namespace tests create and remove their own topologies; one at a time keeps them from
    // competing for the two cores and for interface names. Every binary runs even after one
    // fails, so that a CI log shows all the failures at once.
    let bins = agent_binaries()?;
    let totals = run_tests(
        Command::new("cargo")
            .args([
                "test",
                "--workspace",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .env("LB_BIN_DIR", &bins),
    )?;
    // One closing line for the whole run: cargo's own last line is a doc-test binary's.
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 {
        bail!("{} tests failed", totals.failed);
    }
    Ok(())
}

/// Builds `lb-agent` and `lbctl` once, into a directory of their own, for the namespace tests
/// (`LB_BIN_DIR`). Without it each test binary would run `cargo build -p lb-agent -p lbctl`,
/// whose feature set differs from `cargo test --workspace`'s: both would relink the agent in
/// turn, and `cargo test` would overwrite the binaries a test is running.
fn agent_binaries() -> anyhow::Result<PathBuf> {
    run_cmd(Command::new("cargo").args(["build", "-p", "lb-agent", "-p", "lbctl", "--bins"]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let dir = std::path::absolute(target.join("test-bins")).context("absolute path of target/")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for bin in ["lb-agent", "lbctl"] {
        let from = target.join("debug").join(bin);
        std::fs::copy(&from, dir.join(bin))
            .with_context(|| format!("copy {} to {}", from.display(), dir.display()))?;
    }
    Ok(dir)
}

/// Test counts summed over every test binary of a run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, echoing its output, and sums its `test result:` lines.
fn run_tests(cmd: &mut Command) -> anyhow::Result<Totals> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read cargo test's output")?;
        println!("{line}");
        add_result_line(&mut totals, &line);
    }
    let status = child.wait().context("wait for cargo test")?;
    if !status.success() {
        bail!(
            "{cmd:?} failed with {status} ({} passed, {} failed)",
            totals.passed,
            totals.failed
        );
    }
    Ok(totals)
}

/// Adds `test result: ok. 3 passed; 0 failed; 1 ignored; ...` to the totals.
fn add_result_line(totals: &mut Totals, line: &str) {
    let Some(rest) = line.strip_prefix("test result: ") else {
        return;
    };
    for part in rest.split(['.', ';']) {
        let mut words = part.split_whitespace();
        let (Some(count), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => totals.passed += count,
            "failed" => totals.failed += count,
            "ignored" => totals.ignored += count,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_summed() {
        let mut totals = Totals::default();
        add_result_line(
            &mut totals,
            "test result: ok. 11 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 2.87s",
        );
        add_result_line(
            &mut totals,
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        add_result_line(&mut totals, "running 3 tests");
        assert_eq!(
            totals,
            Totals {
                passed: 12,
                failed: 2,
                ignored: 1
            }
        );
    }
}
