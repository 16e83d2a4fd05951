//! # lb-agent
//!
//! The node agent of lb. Data flows one way:
//!
//! - `k8s/` watches Services and EndpointSlices (kube or a directory of YAML) into a snapshot;
//! - `model/` turns a snapshot into the frontends and backends to program (kube-proxy's rules);
//! - `sync/` turns them into map content (`desired`), diffs it against the maps (`plan`) and
//!   applies the difference in a safe order (`apply`), retrying failed passes with backoff;
//! - `datapath/` loads, attaches and owns the eBPF programs and maps.
//!
//! `health_check` serves the `healthCheckNodePort` of externalTrafficPolicy Local load
//! balancers from the model's output. `config/` defines every option once; `api/` serves
//! `lbctl` (its own crate, on `lb-api`) over a unix socket; `monitor/` fans drop events out to
//! its clients; `lock` keeps one agent per bpf root; `uninstall` removes what lb installed on a
//! node (`lb-agent --uninstall`).
pub mod agent;
pub mod api;
pub mod config;
pub mod datapath;
pub mod health_check;
pub mod k8s;
pub mod lock;
pub mod model;
pub mod monitor;
pub mod sync;
pub mod telemetry;
pub mod uninstall;

pub use agent::run;
