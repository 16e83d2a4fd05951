//! Network namespaces for the benchmarks, deleted on drop, and a way to run a closure with the
//! calling thread inside one. Names start with `lbbench-`, apart from the lab's `lblab-`, so
//! that neither suite's clean-up touches the other's.
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Prefix of every namespace the benchmarks create.
pub const PREFIX: &str = "lbbench-";

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lbbench-<short>` (replacing a stale one) with `lo` up.
    pub fn create(short: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{short}");
        if std::path::Path::new("/run/netns").join(&name).exists() {
            let _ = host("ip", &["netns", "del", &name]);
        }
        host("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The full name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        host("ip", &full).map(drop)
    }

    /// Runs `program args` inside (network namespace only), stdin from `input`; returns how
    /// long the process took from spawn to exit.
    pub fn run_timed(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&std::path::Path>,
    ) -> anyhow::Result<Duration> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match input {
            Some(path) => {
                cmd.stdin(File::open(path).with_context(|| format!("open {}", path.display()))?)
            }
            None => cmd.stdin(Stdio::null()),
        };
        let started = Instant::now();
        let output = cmd
            .output()
            .with_context(|| format!("run {program} in {}", self.name))?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!(
                "{program} {} in {}: {}: {}",
                args.join(" "),
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(elapsed)
    }

    /// Sets a sysctl inside.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.run_timed("sysctl", &["-q", "-w", &format!("{key}={value}")], None)
            .map(drop)
    }

    /// Runs `f` with the calling thread inside the namespace, then moves it back.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> anyhow::Result<R> {
        let own = File::open("/proc/thread-self/ns/net").context("open own netns")?;
        let target = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("open netns {}", self.name))?;
        setns(&target)?;
        let result = f();
        setns(&own)?;
        Ok(result)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = host("ip", &["netns", "del", &self.name]) {
            eprintln!("lb-bench: {err:#}");
        }
    }
}

fn setns(file: &File) -> anyhow::Result<()> {
    // SAFETY: a valid namespace fd; only this thread's network namespace changes.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `program args` on the host; failure is an error naming the command.
pub fn host(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Creates a veth pair `a_dev` (in `a`) – `b_dev` (in `b`), both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])
}

/// Removes namespaces a crashed run left behind.
pub fn clean_stale() {
    if let Ok(list) = host("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(PREFIX) {
                let _ = host("ip", &["netns", "del", name]);
            }
        }
    }
}
