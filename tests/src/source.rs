//! An agent source (`lb_agent::k8s`'s file or kube source) running as a task of the test's
//! runtime, with the view it publishes: [`Running::snapshot_where`] awaits a state of the view,
//! [`Running::stop`] shuts the source down and checks that it ended cleanly.
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_agent::k8s::{Error, Snapshot, View};
use lb_testkit::patience::SETTLE_WITHIN;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A source task and the view it publishes.
pub struct Running {
    /// The view the source publishes.
    pub view: View,
    versions: watch::Receiver<u64>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Spawns `run(view, shutdown)`, a source publishing into a fresh view until `shutdown`.
    pub fn spawn<F>(run: impl FnOnce(View, CancellationToken) -> F) -> Self
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let view = View::default();
        let versions = view.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(view.clone(), shutdown.clone()));
        Self {
            view,
            versions,
            shutdown,
            task,
        }
    }

    /// Waits until the source has synced and its view satisfies `pred` (within
    /// `SETTLE_WITHIN`); returns the snapshot and how long the wait took.
    pub async fn snapshot_where(
        &mut self,
        what: &str,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> (Arc<Snapshot>, Duration) {
        let started = Instant::now();
        loop {
            if self.view.is_synced() {
                let snapshot = self.view.snapshot();
                if pred(&snapshot) {
                    return (Arc::new(snapshot), started.elapsed());
                }
            }
            let left = SETTLE_WITHIN.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.versions.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("the source stopped while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {SETTLE_WITHIN:?} waiting for {what}; last: {:?}",
                    names(&self.view.snapshot())
                ),
            }
        }
    }

    /// Shuts the source down; it must end, cleanly, within `SETTLE_WITHIN`.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(SETTLE_WITHIN, self.task)
            .await
            .expect("source stops on shutdown");
        result.expect("source task").expect("source ends cleanly");
    }
}

/// The `namespace/name` of every Service and of every EndpointSlice in `snapshot`.
pub fn names(snapshot: &Snapshot) -> (Vec<String>, Vec<String>) {
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!(
            "{}/{}",
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default()
        )
    };
    (
        snapshot
            .services
            .iter()
            .map(|s| name(&s.metadata))
            .collect(),
        snapshot.slices.iter().map(|s| name(&s.metadata)).collect(),
    )
}
