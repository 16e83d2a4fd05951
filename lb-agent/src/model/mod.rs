//! The model: a pure function from a [`Snapshot`](crate::k8s::Snapshot) and this node to
//! the frontends and backends to program, following kube-proxy's rules (k8s-semantics.md §0–§2).
//!
//! - `frontend.rs`: which Services are served and on which VIP:port/protocol;
//! - `endpoints.rs`: a Service port's endpoints out of all its EndpointSlices;
//! - `desired.rs`: which endpoints become active or terminating backends, and the health checks
//!   of externalTrafficPolicy Local load balancers;
//! - `incremental.rs`: the same output kept per Service, recomputed for changed Services only.
//!
//! Nothing here does I/O or imports aya, a kube client or tokio, so the tests take milliseconds.
//! Watching is left to `k8s/`, programming to `sync/`.

mod desired;
mod endpoints;
mod frontend;
mod incremental;

pub use desired::{
    BackendState, DEFAULT_NODE_PORTS, Desired, DesiredBackend, DesiredService, HealthCheck,
    ThisNode, desired, desired_services,
};
pub use endpoints::SERVICE_NAME_LABEL;
pub use frontend::{
    DEFAULT_AFFINITY_TIMEOUT_SECS, Frontend, FrontendKind, HEADLESS_LABEL, IpFamily,
    LB_ALGORITHM_ANNOTATION, LbAlgorithm, Protocol, SERVICE_PROXY_NAME_LABEL, SourceRange,
};
pub use incremental::{Incremental, ModelChanges};

#[cfg(test)]
mod tests;
