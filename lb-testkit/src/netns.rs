//! Network namespaces and the processes and threads inside them, as guards.
//!
//! A [`Netns`] is created with `ip netns add` and deleted on drop, after every process still
//! inside it has been stopped. Commands run inside with `nsenter --net=/run/netns/NAME`, which
//! switches the network namespace only: `ip netns exec` also mounts a fresh /sys, where
//! /sys/fs/bpf is no bpffs and an agent could not pin its maps. A [`Process`] is a long-running
//! child (a server, BIRD, an agent) that is stopped on drop.
//!
//! Code of this process enters a namespace only on a thread of its own ([`Netns::within`],
//! [`Netns::spawn_thread`]) that ends with the code it runs: no thread ever has to move back,
//! so a panic cannot leave one in the wrong namespace. Sockets made there stay in the namespace.
//!
//! Names are the caller's: the lab prefixes its own with `lblab-`, tests with `lbtr-` and the
//! benchmarks with `lbbench-`, so that one suite's clean-up ([`remove_all`]) never touches
//! another's. Every failure names the command that failed and what it wrote to stderr.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Error, Result, wait_until};

/// How long a stopped process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The result of a command that was allowed to fail, with the command line to show.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command as a user would type it inside the namespace (without the `nsenter` prefix).
    pub cmdline: String,
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit status as text (`exit status: 28`).
    pub status: String,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Outcome {
    /// Runs `cmd` (typed as `cmdline`) to its end with no stdin, allowing it to fail; an error
    /// only when it cannot start.
    pub(crate) fn of(cmdline: String, cmd: &mut Command) -> Result<Self> {
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                cmd: cmdline.clone(),
                source,
            })?;
        Ok(Self {
            cmdline,
            success: output.status.success(),
            status: output.status.to_string(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Turns a failed outcome into [`Error::Command`], returning stdout otherwise.
    pub fn into_stdout(self) -> Result<String> {
        if self.success {
            return Ok(self.stdout);
        }
        let stderr = if self.stderr.trim().is_empty() {
            self.stdout.trim().to_owned()
        } else {
            self.stderr.trim().to_owned()
        };
        Err(Error::Command {
            cmd: self.cmdline,
            status: self.status,
            stderr,
        })
    }
}

/// Renders a command line the way a user would type it.
pub fn cmdline(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(|word| {
            if word.is_empty() || word.contains([' ', '\'', '*', '"']) {
                format!("'{word}'")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args` on the host, allowing it to fail.
pub fn exec_host(program: &str, args: &[&str]) -> Result<Outcome> {
    Outcome::of(cmdline(program, args), Command::new(program).args(args))
}

/// Runs `program args` on the host and returns its stdout; failure is an error.
pub fn run_host(program: &str, args: &[&str]) -> Result<String> {
    exec_host(program, args)?.into_stdout()
}

/// A network namespace, deleted (with every process inside) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (removing a stale one of the same name first), with `lo`
    /// up. The name is the caller's, prefix included.
    pub fn create(name: &str) -> Result<Self> {
        if Path::new("/run/netns").join(name).exists() {
            remove(name)?;
        }
        run_host("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a thread of this process that has entered the namespace, and returns its
    /// result. Sockets `f` creates stay in the namespace after the thread has gone, so a test can
    /// hold a connection or a listener there; links `f` attaches are to the namespace's devices.
    /// A panic in `f` is resumed on the calling thread.
    pub fn within<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let file = self.open()?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                enter(&file, &self.path())?;
                Ok(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts `f` on a thread of its own inside the namespace, for work that outlives the call
    /// (a server thread, a load generator); returns once the thread is inside, or the error
    /// that kept it out. The thread ends with `f`, so it never has to leave the namespace.
    pub fn spawn_thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<std::thread::JoinHandle<R>> {
        let file = self.open()?;
        let path = self.path();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let entered = enter(&file, &path);
            let inside = entered.is_ok();
            // The receiver waits for this message; it is gone only if the caller panicked.
            let _ = entered_tx.send(entered);
            if !inside {
                // Never run `f` outside the namespace: end here; the caller sees the error.
                std::panic::resume_unwind(Box::new("not inside the namespace"));
            }
            f()
        });
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(thread),
            Ok(Err(err)) => {
                // Joins the thread that gave up (its "panic" carries no information).
                let _ = thread.join();
                Err(err)
            }
            Err(_) => Err(Error::Unexpected(format!(
                "the thread entering {} ended without a word",
                self.name
            ))),
        }
    }

    fn open(&self) -> Result<File> {
        let path = self.path();
        File::open(&path).map_err(|source| Error::Io {
            action: "open",
            path,
            source,
        })
    }

    /// The index of interface `dev` inside the namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", dev])?;
        out.split(':')
            .next()
            .and_then(|index| index.trim().parse().ok())
            .ok_or_else(|| Error::Unexpected(format!("no ifindex of {dev} in {out:?}")))
    }

    /// The namespace's name (`lblab-router`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace (network namespace only).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace, allowing it to fail.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Outcome> {
        Outcome::of(cmdline(program, args), self.command(program).args(args))
    }

    /// Runs `program args` inside the namespace and returns its stdout; failure is an error.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        self.exec(program, args)?.into_stdout()
    }

    /// Runs `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_host("ip", &full)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward`, `1`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Adds `addr` (with its prefix length) to `dev` and sets the link up.
    pub fn addr(&self, dev: &str, addr: &str) -> Result<()> {
        self.ip(&["addr", "add", addr, "dev", dev])?;
        self.ip(&["link", "set", dev, "up"]).map(drop)
    }

    /// Adds a route: `ip route add ARGS`.
    pub fn route(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["route", "add"];
        full.extend_from_slice(args);
        self.ip(&full).map(drop)
    }

    /// Starts a long-running `program args` inside the namespace, its stdout and stderr
    /// appended to `log`.
    pub fn spawn(&self, program: &str, args: &[&str], log: &Path) -> Result<Process> {
        let line = cmdline(program, args);
        let open = || {
            File::options()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| Error::Io {
                    action: "open log",
                    path: log.to_owned(),
                    source,
                })
        };
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .spawn()
            .map_err(|source| Error::Spawn {
                cmd: line.clone(),
                source,
            })?;
        Ok(Process {
            cmdline: line,
            netns: self.name.clone(),
            log: log.to_owned(),
            child,
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = remove(&self.name) {
            eprintln!("lb-testkit: {err}");
        }
    }
}

/// Creates a veth pair with one end in each namespace, both ends up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
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
    b.ip(&["link", "set", b_dev, "up"]).map(drop)
}

/// A long-running process inside a namespace, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Process {
    cmdline: String,
    netns: String,
    log: PathBuf,
    child: Child,
}

impl Process {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file (stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log, to explain a failure.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails when the process has already exited, with the tail of its log.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                cmd: format!("{} (in {})", self.cmdline, self.netns),
                status: status.to_string(),
                log: self.log.clone(),
                tail: self.log_tail(20),
            }),
            Err(source) => Err(Error::Spawn {
                cmd: self.cmdline.clone(),
                source,
            }),
        }
    }

    /// Like [`wait_until`], but fails at once, with the end of the log, if the process exits
    /// meanwhile: a daemon that died will not become ready.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> std::result::Result<Option<T>, String>,
    ) -> Result<T> {
        let mut exited = None;
        let value = wait_until(what, timeout, || {
            if let Err(err) = self.check_running() {
                exited = Some(err);
                return Ok(Some(None));
            }
            check().map(|value| value.map(Some))
        });
        let value = value.map_err(|err| match err {
            // A daemon that is up but not doing what is awaited usually says why in its log.
            Error::Timeout {
                what,
                timeout,
                last,
            } => Error::Timeout {
                what,
                timeout,
                last: format!(
                    "{last}\n--- last lines of {} ---\n{}",
                    self.log.display(),
                    self.log_tail(20)
                ),
            },
            other => other,
        })?;
        match (value, exited) {
            (Some(value), _) => Ok(value),
            (None, Some(err)) => Err(err),
            (None, None) => Err(Error::Unexpected(format!("lost track of {}", self.cmdline))),
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit on its own; returns its
    /// exit status. A process that outlives the deadline is killed and reported as a timeout.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        signal(self.child.id(), libc::SIGTERM);
        let what = format!("`{}` to exit after SIGTERM", self.cmdline);
        let waited = wait_until(&what, timeout, || match self.child.try_wait() {
            Ok(Some(status)) => Ok(Some(status)),
            Ok(None) => Ok(None),
            Err(err) => Err(err.to_string()),
        });
        if waited.is_err() {
            // Both fail only when the child is already gone.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        waited
    }

    /// Stops the process: SIGTERM, then SIGKILL if it has not exited within a grace period.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(self.child.id(), libc::SIGTERM);
        let exited = wait_until("process exit", STOP_GRACE, || match self.child.try_wait() {
            Ok(Some(_)) | Err(_) => Ok(Some(())),
            Ok(None) => Ok(None),
        });
        if exited.is_err() {
            // Both fail only when the child is already gone, which is what we want.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory effects; a stale pid only yields ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Moves the calling thread into the network namespace `file` (opened from `path`); only
/// threads that end inside it call this.
fn enter(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns(2) on a namespace file we hold open; it switches only this thread's
    // network namespace, and the thread ends inside it.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::Io {
            action: "enter network namespace",
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Stops every process inside namespace `name`, then deletes it.
pub fn remove(name: &str) -> Result<()> {
    let pids: Vec<u32> = exec_host("ip", &["netns", "pids", name])?
        .stdout
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    for &pid in &pids {
        signal(pid, libc::SIGTERM);
    }
    let alive = |pid: &u32| Path::new(&format!("/proc/{pid}")).exists();
    // A timeout here is handled below: whatever still runs is killed.
    let _ = wait_until(&format!("processes in {name} to exit"), STOP_GRACE, || {
        Ok((!pids.iter().any(alive)).then_some(()))
    });
    for pid in pids.iter().filter(|pid| alive(pid)) {
        signal(*pid, libc::SIGKILL);
    }
    run_host("ip", &["netns", "del", name]).map(drop)
}

/// The namespaces whose name starts with `prefix`.
pub fn list(prefix: &str) -> Result<Vec<String>> {
    let list = run_host("ip", &["netns", "list"])?;
    Ok(list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Removes every namespace whose name starts with `prefix` (and the processes in them): what a
/// crashed run left behind. Returns the names it removed.
pub fn remove_all(prefix: &str) -> Result<Vec<String>> {
    let names = list(prefix)?;
    for name in &names {
        remove(name)?;
    }
    Ok(names)
}
