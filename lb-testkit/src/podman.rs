//! Podman as lb's image build and its container test run it: with [`CONTAINERS_CONF`]
//! (runc, no default rlimits), passed in the environment of every command so that the
//! machine's own configuration stays as it is; a [`Container`] guard removed on drop.
use std::process::Command;

use crate::{Error, Outcome, Result, cmdline};

/// The containers.conf every podman command of lb reads (see the comments in the file).
pub const CONTAINERS_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/containers.conf");

/// `podman` with lb's [`CONTAINERS_CONF`].
pub fn command() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", CONTAINERS_CONF);
    cmd
}

/// Runs `podman args`, allowing it to fail.
pub fn exec(args: &[&str]) -> Result<Outcome> {
    Outcome::of(cmdline("podman", args), command().args(args))
}

/// Runs `podman args` and returns its stdout; failure is an error.
pub fn run(args: &[&str]) -> Result<String> {
    exec(args)?.into_stdout()
}

/// Whether the image `reference` is in podman's local storage.
pub fn image_exists(reference: &str) -> Result<bool> {
    Ok(exec(&["image", "exists", reference])?.success)
}

/// A container by name, removed (killed first if it runs) on drop.
#[derive(Debug)]
pub struct Container {
    name: String,
}

impl Container {
    /// Guards the container `name`, which need not exist yet; a stale one of that name (left
    /// by a crashed run) is removed first.
    pub fn named(name: &str) -> Self {
        let container = Self {
            name: name.to_owned(),
        };
        container.remove();
        container
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its state as `podman inspect` reports it (`running`, `exited`, …) and exit code.
    pub fn state(&self) -> Result<(String, i32)> {
        let out = run(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &self.name,
        ])?;
        let (status, code) = out
            .trim()
            .split_once(' ')
            .ok_or_else(|| Error::Unexpected(format!("podman inspect printed {out:?}")))?;
        let code = code
            .parse()
            .map_err(|_| Error::Unexpected(format!("podman inspect printed {out:?}")))?;
        Ok((status.to_owned(), code))
    }

    /// What the container wrote to stdout and stderr so far, its last `lines` lines.
    pub fn logs(&self, lines: usize) -> String {
        let tail = lines.to_string();
        match exec(&["logs", "--tail", &tail, &self.name]) {
            Ok(out) => format!("{}{}", out.stdout, out.stderr),
            Err(err) => format!("(no logs: {err})"),
        }
    }

    /// `podman exec NAME args`, allowed to fail.
    pub fn exec(&self, args: &[&str]) -> Result<Outcome> {
        let mut full = vec!["exec", self.name.as_str()];
        full.extend_from_slice(args);
        exec(&full)
    }

    /// Removes the container, killing it first if it runs; a missing one is not an error.
    pub fn remove(&self) {
        let _ = exec(&["rm", "--force", "--time", "0", "--ignore", &self.name]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
    }
}
