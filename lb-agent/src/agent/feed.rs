//! The reconcile loop's feed in the running agent: the source's [`View`] through the
//! incremental model (`model::Incremental`), with the outcome of each pass recorded in
//! `AgentState` (sync duration, network programming latency, names for `service list`).
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::AgentState;
use crate::{
    health_check::HealthCheckServer,
    k8s::{Dirty, View},
    model::{self, ThisNode},
    sync::{Error, Feed, SyncStats, Update},
    telemetry::error_chain,
};

/// The agent's feed; see the module docs.
pub struct ModelFeed {
    source: Source,
    model: model::Incremental,
    node: ThisNode,
    state: Arc<AgentState>,
    health_checks: Arc<HealthCheckServer>,
    /// Changes taken but not yet programmed by a successful pass.
    pending: Vec<Dirty>,
    /// Whether the health checks have been set up once.
    health_checks_set: bool,
    /// Whether the pass being run is a full one.
    full: bool,
}

impl ModelFeed {
    /// A feed of `view` for `node`.
    pub fn new(
        view: View,
        node: ThisNode,
        state: Arc<AgentState>,
        health_checks: Arc<HealthCheckServer>,
    ) -> Self {
        Self {
            source: Source::subscribe(view),
            model: model::Incremental::default(),
            node,
            state,
            health_checks,
            pending: Vec::new(),
            health_checks_set: false,
            full: false,
        }
    }
}

impl Feed for ModelFeed {
    async fn changed(&mut self) -> bool {
        self.source.changed().await
    }

    fn next(&mut self, full: bool) -> Option<Update> {
        let changes = self.source.view.take_changes()?;
        self.full = full;
        let model_changes = self.model.update(
            changes.services.iter().map(|(name, _, objects)| {
                (
                    (name.namespace.clone(), name.name.clone()),
                    objects.snapshot(),
                )
            }),
            &self.node,
        );
        self.pending
            .extend(changes.services.iter().map(|(_, dirty, _)| *dirty));
        if model_changes.health_checks || !self.health_checks_set {
            self.health_checks_set = true;
            // Binds and spawns only: the pass goes on at once.
            self.health_checks.update(&self.model.health_checks());
        }
        if full {
            let services = self.model.services();
            self.state.record_names(&services);
            return Some(Update::Full(services));
        }
        self.state
            .update_names(&model_changes.upserts, &model_changes.removals);
        Some(Update::Changes {
            upserts: model_changes.upserts,
            removals: model_changes.removals,
        })
    }

    fn record(&mut self, outcome: Result<&SyncStats, &Error>) {
        if outcome.is_ok() {
            let now = SystemTime::now();
            for dirty in self.pending.drain(..) {
                if let Some(trigger) = dirty.trigger {
                    // A trigger time in the future (a skewed clock) counts as zero.
                    let seconds = now
                        .duration_since(trigger)
                        .map_or(0.0, |elapsed| elapsed.as_secs_f64());
                    self.state.record_programming(seconds);
                }
            }
        }
        // Before the pass is recorded: the first one makes the agent ready.
        if std::mem::take(&mut self.full) {
            release_free_memory();
        }
        self.state
            .record_sync(outcome.cloned().map_err(|err| error_chain(err)));
    }
}

/// The source's side of the feed: its view and a subscription to its changes.
struct Source {
    view: View,
    versions: watch::Receiver<u64>,
}

impl Source {
    /// Subscribes to `view`'s changes, the ones made before included.
    fn subscribe(view: View) -> Self {
        let mut versions = view.subscribe();
        // What the source did before this subscription (its first read, `set_synced`) counts
        // as unseen: a source that synced with nothing and never changes again must still get
        // its first pass, or the agent never becomes ready.
        versions.mark_changed();
        Self { view, versions }
    }

    /// Completes when the view may have changed; false once the source is gone.
    async fn changed(&mut self) -> bool {
        self.versions.changed().await.is_ok()
    }
}

/// Hands the heap's free pages back to the kernel. A full pass decodes every object and plans
/// every service; glibc gives back only the top of each arena by itself, so without this the
/// agent's RSS stays at that peak (about twice what it keeps at 10k Services).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Regression for 7784ea7: the directory source reads an empty directory and marks its
    /// view synced before the agent builds its feed; nothing changes after. The feed must
    /// still wake at once for the first pass, or the agent stays unready until the periodic
    /// resync.
    #[tokio::test(start_paused = true)]
    async fn a_source_synced_with_nothing_before_the_feed_subscribed_still_gets_its_first_pass() {
        let view = View::default();
        view.set_synced();
        let mut source = Source::subscribe(view);
        // On the paused clock a feed that never wakes times out at once, not in a minute.
        let woke = tokio::time::timeout(Duration::from_secs(60), source.changed())
            .await
            .expect("the feed wakes for the sync it subscribed after");
        assert!(woke, "the source is still there");
        let changes = source
            .view
            .take_changes()
            .expect("the first pass finds the source synced");
        assert!(changes.services.is_empty(), "and finds nothing to program");
    }
}
