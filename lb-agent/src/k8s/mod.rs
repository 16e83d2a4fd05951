//! Sources of truth: Services and EndpointSlices from the Kubernetes API or a directory, and
//! (from the API) this node's zone.
//!
//! - `kube.rs`: kube-rs watchers and reflector stores (`--source kube`);
//! - `file.rs`: a directory of YAML/JSON as `kubectl get -o yaml` prints it (`--source file:DIR`);
//! - `filter.rs`: the label selector kube-proxy uses to leave opted-out objects alone.
//!
//! - `objects.rs`: the [`View`] a source fills, indexed by Service, which tells the reconciler
//!   which Services' objects changed;
//! - `cached.rs`: how an object is kept there ([`Cached`]: stripped, and encoded).
//!
//! A source applies what it sees to its [`View`] and marks it synced once it has listed
//! everything; it never interprets the objects (that is `model/`) and never sees the maps
//! (that is `sync/`).

mod cached;
mod file;
mod filter;
mod kube;
mod objects;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio_util::sync::CancellationToken;

pub use cached::{
    Cached, CachedKind, IntoCached, LAST_CHANGE_TRIGGER_TIME, strip_service, strip_slice,
};
pub use filter::LABEL_SELECTOR;
pub use objects::{Changes, Dirty, Objects, ServiceName, ServiceObjects, View};

/// Label of a Node naming its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Every Service and EndpointSlice a source currently knows, sorted by namespace/name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// core/v1 Services.
    pub services: Vec<Service>,
    /// discovery.k8s.io/v1 EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// This node's `topology.kubernetes.io/zone` label, from its Node object (the kube
    /// source); `None` when unknown (the file source, or no such label).
    pub node_zone: Option<String>,
}

/// Which source to run, as `--source` spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// The Kubernetes API (in-cluster config or KUBECONFIG).
    Kube,
    /// A directory of YAML/JSON files.
    File(PathBuf),
}

impl FromStr for SourceSpec {
    type Err = Error;

    /// Parses `kube` or `file:DIR`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kube" => Ok(Self::Kube),
            _ => match s.strip_prefix("file:") {
                Some(dir) if !dir.is_empty() => Ok(Self::File(PathBuf::from(dir))),
                _ => Err(Error::InvalidSpec { spec: s.to_owned() }),
            },
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kube => f.write_str("kube"),
            Self::File(dir) => write!(f, "file:{}", dir.display()),
        }
    }
}

/// Errors a source can end with. Anything after a successful start is logged and retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--source` is neither `kube` nor `file:DIR`.
    #[error("invalid source `{spec}`; expected `kube` or `file:DIR`")]
    InvalidSpec {
        /// What was given.
        spec: String,
    },
    /// The file source's directory does not exist at start.
    #[error("source directory `{}` does not exist; create it or fix --source", dir.display())]
    DirMissing {
        /// The directory.
        dir: PathBuf,
    },
    /// The file source's directory cannot be read at start.
    #[error("cannot read source directory `{}`", dir.display())]
    DirRead {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The directory scan task died (a bug).
    #[error("directory scan of `{}` stopped unexpectedly", dir.display())]
    ScanTask {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// No client configuration (in-cluster or KUBECONFIG) could be loaded.
    #[error("cannot create a Kubernetes client; run in a pod or set KUBECONFIG")]
    Client {
        /// Why.
        #[source]
        source: ::kube::Error,
    },
    /// A watch stream ended, which kube-rs watchers never do.
    #[error("the {kind} watch ended unexpectedly")]
    WatchEnded {
        /// `Service` or `EndpointSlice`.
        kind: &'static str,
    },
}

/// The documents of a YAML stream, empty ones (`---` with nothing after) skipped. Booleans are
/// YAML 1.2's (`true`/`false` only), as Kubernetes reads them: a Service named `n` or `on`
/// stays a string.
pub fn yaml_documents<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<Vec<T>, serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    serde_saphyr::from_multiple_with_options(text, options)
}

/// Checks what can be checked of a source before the agent touches the datapath: a file
/// source's directory exists and can be read. The kube source is checked when it connects.
pub fn check_source(spec: &SourceSpec) -> Result<(), Error> {
    match spec {
        SourceSpec::Kube => Ok(()),
        SourceSpec::File(dir) => match std::fs::read_dir(dir) {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::DirMissing { dir: dir.clone() })
            }
            Err(source) => Err(Error::DirRead {
                dir: dir.clone(),
                source,
            }),
        },
    }
}

static MALFORMED_OBJECTS: AtomicU64 = AtomicU64::new(0);

/// Malformed files and objects skipped by the file source since start (for metrics).
pub fn malformed_objects_total() -> u64 {
    MALFORMED_OBJECTS.load(Ordering::Relaxed)
}

fn count_malformed() {
    MALFORMED_OBJECTS.fetch_add(1, Ordering::Relaxed);
}

static WATCH_ERRORS: AtomicU64 = AtomicU64::new(0);

/// When the source last heard from the API server or read its directory, and its last error
/// with when it happened.
#[derive(Default)]
struct Health {
    ok_at: Option<std::time::Instant>,
    error: Option<(String, std::time::Instant)>,
}

static HEALTH: std::sync::Mutex<Health> = std::sync::Mutex::new(Health {
    ok_at: None,
    error: None,
});

fn health() -> std::sync::MutexGuard<'static, Health> {
    HEALTH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Failed watches (kube) and failed directory reads (file) since start (for metrics).
pub fn watch_errors_total() -> u64 {
    WATCH_ERRORS.load(Ordering::Relaxed)
}

/// The source heard from the API server or read its directory.
fn source_ok() {
    health().ok_at = Some(std::time::Instant::now());
}

/// A watch or a directory read failed.
fn source_error(error: String) {
    WATCH_ERRORS.fetch_add(1, Ordering::Relaxed);
    health().error = Some((error, std::time::Instant::now()));
}

/// The source's connectivity, for `lbctl status`: `connected` (kube) or `readable` (file)
/// when the last word from it was good, `failing for Ns: ERROR` when its last error is newer,
/// `connecting` before either.
pub fn source_connectivity(spec: &SourceSpec) -> String {
    let health = health();
    match (&health.ok_at, &health.error) {
        (ok, Some((error, at))) if ok.is_none_or(|ok| ok < *at) => {
            format!("failing for {}s: {error}", at.elapsed().as_secs())
        }
        (Some(_), _) => match spec {
            SourceSpec::Kube => "connected".to_owned(),
            SourceSpec::File(_) => "readable".to_owned(),
        },
        (None, _) => "connecting".to_owned(),
    }
}

/// Runs a source until `shutdown` is cancelled.
///
/// Applies every change to `view` as it is seen (no debounce: the reconciler coalesces what
/// arrives while it is busy), and marks the view synced once Services and EndpointSlices have
/// both been listed. Bad input is logged and skipped, never a panic; errors after start are
/// retried, so this returns only on shutdown or on a start-up error.
///
/// The kube source also watches the Node named `node_name` for its zone label.
pub async fn run_source(
    spec: SourceSpec,
    node_name: String,
    view: View,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    match spec {
        SourceSpec::Kube => {
            let client = ::kube::Client::try_default()
                .await
                .map_err(|source| Error::Client { source })?;
            kube::run(client, Some(&node_name), &view, shutdown).await
        }
        SourceSpec::File(dir) => file::run(dir, &view, shutdown).await,
    }
}

/// [`run_source`] for `--source kube` with a client the caller built (tests point it at a fake
/// API server); the Node named `node_name` is watched for its zone, none when `None`.
pub async fn run_kube(
    client: ::kube::Client,
    node_name: Option<&str>,
    view: View,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    kube::run(client, node_name, &view, shutdown).await
}

/// Sorts by namespace/name so equal views compare equal whatever order they arrived in.
fn sort_snapshot(snapshot: &mut Snapshot) {
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (m.namespace.clone(), m.name.clone())
    };
    snapshot.services.sort_by_key(|s| key(&s.metadata));
    snapshot.slices.sort_by_key(|s| key(&s.metadata));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_spec_parses_kube_and_file_dir() {
        assert_eq!(
            "kube".parse::<SourceSpec>().expect("kube"),
            SourceSpec::Kube
        );
        assert_eq!(
            "file:/etc/lb/objects".parse::<SourceSpec>().expect("file"),
            SourceSpec::File(PathBuf::from("/etc/lb/objects"))
        );
        assert_eq!(SourceSpec::File(PathBuf::from("d")).to_string(), "file:d");
    }

    #[test]
    fn source_spec_rejects_anything_else_with_the_expected_forms() {
        for bad in ["", "file:", "kubernetes", "dir:/x", "File:/x"] {
            let err = bad.parse::<SourceSpec>().expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("invalid source `{bad}`; expected `kube` or `file:DIR`")
            );
        }
    }
}
