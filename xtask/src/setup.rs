//! `cargo xtask setup`: the recipe of ../shared/docs/toolchain.md, idempotent. Every step checks
//! first and does nothing when its piece is already there.
use std::process::Command;

use anyhow::{Context as _, bail};

/// Debian packages the build, the tests and the lab need.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "bird",
    "iptables",
    "nftables",
    "curl",
    "wrk",
    "iperf3",
    "bpftool",
    // `cargo xtask image` and its test: podman with runc (crun refuses hybrid cgroups; podman
    // reads lb-testkit/containers.conf, nothing under /etc changes) and debootstrap for the
    // base image, as no container registry is reachable.
    "podman",
    "runc",
    "debootstrap",
    "ethtool",
    "python3",
    "iputils-ping",
];

/// The bpf-linker release known to work with LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM major version bpf-linker is built against; nightly rustc must use the same.
const LLVM_MAJOR: &str = "22";

/// Installs what is missing.
pub fn run() -> anyhow::Result<()> {
    install_apt_packages()?;
    install_rust_src()?;
    check_llvm_match()?;
    install_bpf_linker()?;
    mount_bpffs()?;
    Ok(())
}

/// Where the agent, the tests and the lab pin their maps and links.
const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf when the machine booted without it (systemd mounts it; a bare
/// container or VM image may not).
fn mount_bpffs() -> anyhow::Result<()> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    if is_mounted_as(&mountinfo, BPFFS, "bpf") {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at {BPFFS}");
    std::fs::create_dir_all(BPFFS).with_context(|| format!("create {BPFFS}"))?;
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

/// Whether `/proc/self/mountinfo` lists a mount of `fstype` at `mount_point`.
fn is_mounted_as(mountinfo: &str, mount_point: &str, fstype: &str) -> bool {
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        // Fields: id, parent, major:minor, root, mount point, options, optional fields..., "-",
        // fstype, source, super options.
        let Some(separator) = fields.iter().position(|field| *field == "-") else {
            return false;
        };
        fields.get(4) == Some(&mount_point) && fields.get(separator + 1) == Some(&fstype)
    })
}

fn install_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn install_rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("run rustup (is rustup on PATH?)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn check_llvm_match() -> anyhow::Result<()> {
    let out = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("run rustc +nightly (is the nightly toolchain installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let llvm = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if !llvm.starts_with(&format!("{LLVM_MAJOR}.")) {
        bail!(
            "nightly rustc uses LLVM {llvm} but bpf-linker is built against LLVM {LLVM_MAJOR}; \
             they must match: update LLVM_MAJOR and the llvm-{LLVM_MAJOR}-dev packages in xtask/src/setup.rs"
        );
    }
    Ok(())
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (a few minutes)"
    );
    let llvm_prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    let path = format!(
        "{llvm_prefix}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("PATH", path)
            .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), &llvm_prefix),
    )
}

/// Runs a command, failing with its name when it does not succeed.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpffs_mount_is_found_by_mount_point_and_type() {
        let mountinfo = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
40 25 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:15 - bpf bpf rw,mode=700
41 25 0:36 / /sys/fs/cgroup rw - tmpfs tmpfs rw";
        assert!(is_mounted_as(mountinfo, "/sys/fs/bpf", "bpf"));
        assert!(!is_mounted_as(mountinfo, "/sys/fs/cgroup", "bpf"));
        let without = "25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw";
        assert!(!is_mounted_as(without, "/sys/fs/bpf", "bpf"));
    }
}
