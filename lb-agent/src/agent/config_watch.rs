//! Live options from `--config-dir` while the agent runs: the directory is read every
//! [`POLL`], and a live option whose file changed is applied as `lbctl config set` would apply
//! it (nothing to persist: the file is the persisted value). In a cluster the directory is the
//! mounted `lb-config` ConfigMap, so one edit of the ConfigMap (or one `lbctl config set`,
//! which patches it) reaches every node once the kubelet refreshes the mount.
//!
//! A flag or environment variable pins its option: the directory's value is then only shown
//! by `config view` as overridden. A file removed from the directory returns its option to the
//! default. An unknown file or an invalid value is a warning (once per file and value), and
//! the value in effect stays.
//!
//! Polling, as the file source does, sees the ConfigMap's symlink swaps and edits alike.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::AgentState;
use crate::config::{self, OptionKey};
use crate::telemetry::error_chain;

/// How often the directory is read: a change applies within about this long.
pub const POLL: Duration = Duration::from_millis(250);

/// Applies the live options of `dir` to `state` until `shutdown` is cancelled.
pub async fn watch(dir: PathBuf, state: Arc<AgentState>, shutdown: CancellationToken) {
    // What was already warned about, so that a bad file is named once, not every tick.
    let mut warned: BTreeSet<String> = BTreeSet::new();
    let mut ticks = interval(POLL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let values = match config::dir::read(&dir) {
            Ok(values) => values,
            Err(err) => {
                let err = error_chain(&err);
                if warned.insert(err.clone()) {
                    tracing::warn!(error = %err, "cannot read the config directory; keeping the options in effect");
                }
                continue;
            }
        };
        for key in values.keys() {
            if OptionKey::lookup(key).is_none() && warned.insert(format!("unknown {key}")) {
                tracing::warn!("{}", config::unknown_key_warning(key, &dir));
            }
        }
        for &id in OptionKey::ALL.iter().filter(|id| id.spec().live) {
            let spec = id.spec();
            let in_dir = values.get(spec.key).cloned();
            let current = state.live_value(id);
            if state.source(id).pins() {
                state.set_overridden(id, in_dir.filter(|value| *value != current));
                continue;
            }
            let wanted = in_dir.clone().unwrap_or_else(|| spec.default.to_owned());
            if wanted == current {
                continue;
            }
            match config::parse_live(spec.key, &wanted) {
                Ok(change) => {
                    if let Err(err) =
                        state.apply_from_config_dir(change, &current, in_dir.as_deref())
                    {
                        let err = error_chain(err.as_ref());
                        // Retried on the next tick; said once.
                        if warned.insert(format!("apply {}={wanted}: {err}", spec.key)) {
                            tracing::warn!(key = spec.key, value = %wanted, error = %err, "cannot apply an option from the config directory; retrying");
                        }
                    }
                }
                Err(err) => {
                    if warned.insert(format!("invalid {}={wanted}", spec.key)) {
                        tracing::warn!(
                            file = %dir.join(spec.key).display(),
                            error = %err,
                            "ignoring an invalid value in the config directory; keeping `{current}`"
                        );
                    }
                }
            }
        }
    }
}
