//! `cargo xtask image`: lb's container image, built by podman from the repository's
//! Dockerfile on a machine that reaches no container registry.
//!
//! The Dockerfile's final stage runs on `BASE` with the binaries of stage `BINARIES`. Here
//! `BASE` is a Debian 12 made with `debootstrap` (Debian's package mirror is reachable) and
//! imported with `podman import`, and `BINARIES=prebuilt` copies lb-agent and lbctl built on
//! this Debian 12 host (same glibc) from a small build context. The base is cached in podman's
//! storage under a tag derived from its recipe ([`base_tag`]): only the first run, or a
//! changed recipe, pays for debootstrap (about a minute).
//!
//! Podman runs with lb-testkit's containers.conf (runc, no default rlimits) through
//! `CONTAINERS_CONF`; nothing under /etc changes. The image is tagged `--tag` (default
//! `localhost/lb:VERSION`), which is printed on stdout; progress goes to stderr.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use lb_lab::Binaries;
use lb_testkit::podman;

use crate::setup::{self, run_cmd};

/// The Debian release of the base, the same as the host's: the binaries link its glibc.
const SUITE: &str = "bookworm";
/// Where debootstrap downloads from.
const MIRROR: &str = "http://deb.debian.org/debian";
/// Essential packages and apt only.
const VARIANT: &str = "minbase";
/// What the image has beyond minbase (the Dockerfile installs the same on other bases).
const INCLUDE: &[&str] = &["iproute2", "ca-certificates"];
/// How often debootstrap is tried before the build fails.
const DEBOOTSTRAP_TRIES: u32 = 2;
/// Bump when the steps of [`make_base`] change in a way the constants above do not show.
const RECIPE_VERSION: u32 = 1;
/// Repository of the base images in podman's local storage.
const BASE_REPOSITORY: &str = "localhost/lb-base";
/// The label on every image `podman build` makes here, stages included.
const BUILD_LABEL: &str = "lb.build=xtask-image";

/// What to build, from the command line.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The image's name.
    #[arg(long, default_value = concat!("localhost/lb:", env!("CARGO_PKG_VERSION")))]
    tag: String,
    /// Take lb-agent and lbctl from this directory instead of building them (in release mode).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Builds the image and prints its tag.
pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::run()?;
    let workspace = workspace_root();
    let work = target_dir(&workspace).join("image");
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let bins = match &options.bin_dir {
        Some(dir) => Binaries::in_dir(dir)?,
        None => build_release(&workspace)?,
    };
    let base = base_tag();
    if podman::image_exists(&base)? {
        eprintln!("image: base {base} is cached");
    } else {
        make_base(&work, &base)?;
    }

    // The context holds only the two binaries: podman sends all of it to the build.
    let context = work.join(format!("context-{}", std::process::id()));
    remove_dir_if_exists(&context)?;
    let bin = context.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("create {}", bin.display()))?;
    for from in [&bins.agent, &bins.lbctl] {
        let name = from.file_name().context("binary has a file name")?;
        let to = bin.join(name);
        std::fs::hard_link(from, &to)
            .or_else(|_| std::fs::copy(from, &to).map(drop))
            .with_context(|| format!("copy {} into the build context", from.display()))?;
    }
    let built = build(&workspace.join("Dockerfile"), &base, &context, &options.tag);
    remove_dir_if_exists(&context)?;
    built?;
    // What builds leave untagged (the `prebuilt` stage, an image a rebuild replaced) is
    // removed, unless a container still uses it: only images of this command carry the label.
    podman::run(&[
        "image",
        "prune",
        "--force",
        "--filter",
        &format!("label={BUILD_LABEL}"),
    ])?;
    println!("{}", options.tag);
    Ok(())
}

/// The base image's tag: the suite and a hash of everything that makes the image, so that a
/// change of recipe makes a new base instead of reusing a stale one.
fn base_tag() -> String {
    tag_for_recipe(&format!(
        "{RECIPE_VERSION} {SUITE} {MIRROR} {VARIANT} {}",
        INCLUDE.join(",")
    ))
}

fn tag_for_recipe(recipe: &str) -> String {
    format!(
        "{BASE_REPOSITORY}:{SUITE}-{:016x}",
        fnv1a(recipe.as_bytes())
    )
}

/// 64-bit FNV-1a: a hash that, unlike std's, is the same in every Rust release.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// debootstrap into a fresh directory under `work`, then `podman import` it as `tag`.
/// A second try covers a download the mirror broke off.
fn make_base(work: &Path, tag: &str) -> anyhow::Result<()> {
    let rootfs = work.join(format!("rootfs-{}", std::process::id()));
    let mut tries = 0;
    loop {
        tries += 1;
        remove_dir_if_exists(&rootfs)?;
        eprintln!("image: making the base {tag} with debootstrap (about a minute)");
        let made = debootstrap(&rootfs);
        match made {
            Err(err) if tries < DEBOOTSTRAP_TRIES => {
                eprintln!("image: debootstrap failed ({err:#}); trying again");
            }
            made => {
                let made = made.and_then(|()| import(&rootfs, tag));
                remove_dir_if_exists(&rootfs)?;
                return made;
            }
        }
    }
}

fn debootstrap(rootfs: &Path) -> anyhow::Result<()> {
    run_cmd(
        Command::new("debootstrap")
            .arg(format!("--variant={VARIANT}"))
            .arg(format!("--include={}", INCLUDE.join(",")))
            .arg(SUITE)
            .arg(rootfs)
            .arg(MIRROR)
            .stdout(std::io::stderr()),
    )?;
    // The downloaded packages and the package index: an image needs neither.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = rootfs.join(dir);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// `tar -C rootfs -c . | podman import - tag`.
fn import(rootfs: &Path, tag: &str) -> anyhow::Result<()> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("run tar")?;
    let stdout = tar.stdout.take().context("tar's stdout")?;
    let imported = podman::command()
        .args(["import", "-", tag])
        .stdin(stdout)
        .stdout(std::io::stderr())
        .status()
        .context("run podman import");
    let tarred = tar.wait().context("wait for tar")?;
    if !tarred.success() {
        bail!("tar of {} failed with {tarred}", rootfs.display());
    }
    let imported = imported?;
    if !imported.success() {
        bail!(
            "podman import of {} failed with {imported}",
            rootfs.display()
        );
    }
    Ok(())
}

/// `podman build` of the Dockerfile's final stage on `base` with the binaries in `context`.
/// No network: everything the build needs is local.
fn build(dockerfile: &Path, base: &str, context: &Path, tag: &str) -> anyhow::Result<()> {
    eprintln!("image: building {tag}");
    run_cmd(
        podman::command()
            .arg("build")
            .arg("--file")
            .arg(dockerfile)
            .args(["--build-arg", &format!("BASE={base}")])
            .args(["--build-arg", "BINARIES=prebuilt"])
            .args(["--label", BUILD_LABEL])
            .args(["--pull=never", "--network=none", "--tag", tag])
            .arg(context)
            .stdout(std::io::stderr()),
    )
}

/// Builds lb-agent and lbctl in release mode and returns where they are.
fn build_release(workspace: &Path) -> anyhow::Result<Binaries> {
    eprintln!("image: building lb-agent and lbctl (release)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_cmd(
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "lb-agent",
                "-p",
                "lbctl",
                "--bins",
            ])
            .current_dir(workspace),
    )?;
    Ok(Binaries::in_dir(&target_dir(workspace).join("release"))?)
}

/// Removes `dir` and everything under it, after making sure nothing is mounted there:
/// debootstrap mounts /proc and /sys in its target (and binds /dev in some containers), and
/// a recursive removal through such a mount would reach the host's own files.
fn remove_dir_if_exists(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut mounted = mounts_under(dir)?;
    // Deepest first, so that no mount hides another.
    mounted.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for path in &mounted {
        let _ = Command::new("umount").arg(path).status();
    }
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!(
            "{} still has mounts under it ({left:?}); unmount them, then remove it",
            dir.display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_base_tag_names_the_suite_and_changes_with_the_recipe() {
        let tag = base_tag();
        let prefix = "localhost/lb-base:bookworm-";
        assert!(tag.starts_with(prefix), "{tag}");
        assert_eq!(tag.len(), prefix.len() + 16, "{tag}");
        let other = "1 bookworm http://deb.debian.org/debian minbase iproute2";
        assert_ne!(tag, tag_for_recipe(other), "a package less, another base");
    }
}
