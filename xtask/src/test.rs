//! `cargo xtask test`: formatting, lints (host and eBPF) and every test, as CI runs them.
use std::process::Command;

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
    // Namespace tests create and remove their own topologies; one at a time keeps them from
    // competing for the two cores and for interface names.
    run_cmd(Command::new("cargo").args(["test", "--workspace", "--", "--test-threads=1"]))
}
