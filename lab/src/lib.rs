//! # lb-lab: the story's cluster in network namespaces
//!
//! The lab of `../shared/docs/seed-story.md` as a library, so that `cargo xtask demo`, the
//! end-to-end test and later benchmarks build the same thing the same way:
//!
//! - [`netns`]: the lab's namespace names and [`down`], which removes what a crashed run left
//!   behind (namespaces, processes, veths, pods, bpffs and servers are `lb_testkit`'s);
//! - [`story`]: the story's names and addresses (router, k8smaster0, k8sslave0, pods, ASes);
//! - [`topology`]: [`Lab`], which builds them;
//! - [`bird`]: BIRD 1.6 on the router (AS 65000) and on each node (AS 65001) in kube-router's place;
//! - [`agent`]: one `lb-agent` per node and `lbctl` against it;
//! - [`probe`]: curl and ping inside a namespace, and what their output says; the echo
//!   server's clients;
//! - [`manifests`]: the story's Services and EndpointSlices, `lab/manifests/*.yaml`, and their
//!   dual-stack versions, `lab/manifests/ipv6/*.yaml`;
//!
//! Every name this crate creates starts with [`netns::PREFIX`] (namespaces) or lives in a lab
//! namespace (interfaces), under [`RUN_DIR`] (sockets, configs, logs) or under
//! `/sys/fs/bpf/lb-lab-*` (the agents' pins); nothing touches the host's own interfaces.
//! Only one lab runs at a time: [`Lab::up`] clears a previous one first.
//!
//! This crate must not depend on lb-agent: xtask uses it, and xtask builds on a fresh machine
//! that has no bpf-linker yet. The agent is found as a binary by path instead.

pub mod agent;
pub mod bird;
pub mod manifests;
pub mod netns;
pub mod probe;
pub mod story;
pub mod topology;

pub use agent::{Agent, AgentOptions, Binaries, Monitor};
pub use lb_testkit::wait_until;
pub use netns::{Netns, Outcome, Process, down};
pub use topology::Lab;

/// Directory for the lab's control sockets, configs, pidfiles and logs.
pub const RUN_DIR: &str = "/run/lb-lab";

/// The lab's errors and result type: the toolkit's, whose commands it runs.
pub use lb_testkit::{Error, Result};
