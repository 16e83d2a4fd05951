//! `cargo xtask bench`: lb side by side with kube-proxy's iptables and nftables rule sets and
//! the kernel's floor. Runs the `lb-bench` binary (crate `bench/`), which measures every
//! variant interleaved with repetitions and writes `docs/benchmarks.md` and
//! `docs/benchmarks.svg` (about a quarter of an hour on two cores).
//!
//! `--quick` is the CI smoke test: tiny sizes, well under two minutes once built, nothing
//! asserted about speed; it builds with the dev profile (shared with the tests) and writes
//! to `target/bench-quick/` so the committed report is left alone.
//!
//! xtask cannot depend on lb-bench itself: lb-agent's build needs bpf-linker, which `setup`
//! installs first.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::setup::{self, run_cmd};

/// Installs what is missing, then runs the suite (or, with `only`, some of its parts).
pub fn run(quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    setup::run()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let out = if quick {
        target.join("bench-quick")
    } else if only.is_some() {
        target.join("bench-only")
    } else {
        root.join("docs")
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The memory part runs the agent binary, which `cargo run -p lb-bench` does not build.
    // With lbctl, as `cargo xtask test` builds them: one feature set, one link.
    let mut build = Command::new(&cargo);
    build.args(["build", "-p", "lb-agent", "-p", "lbctl", "--bins"]);
    if !quick {
        build.arg("--release");
    }
    run_cmd(build.current_dir(&root))?;
    let mut cmd = Command::new(cargo);
    cmd.arg("run");
    if !quick {
        cmd.arg("--release");
    }
    cmd.args(["-p", "lb-bench", "--"]);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    cmd.arg("--out").arg(&out).current_dir(&root);
    run_cmd(&mut cmd)
}
