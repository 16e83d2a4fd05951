//! # lb-api
//!
//! What `lbctl` and lb-agent exchange over the agent's unix socket, in a crate of its own so
//! that `lbctl`, the lab and xtask build with stable cargo alone (lb-agent's build script needs
//! nightly and bpf-linker):
//!
//! - [`addr`]: addresses of both families as operators read them (`[fd00::1]:80/TCP`);
//! - [`proto`]: the serde types of the newline-delimited JSON protocol;
//! - [`client`]: a blocking client (`lbctl` makes one request and exits);
//! - [`drop`]: the text of drop reasons and hooks, shared by `lbctl monitor` and the agent's
//!   `/metrics` labels.
//!
//! The agent's side of the socket (`api/server.rs`) stays in lb-agent.

pub mod addr;
pub mod client;
pub mod drop;
pub mod proto;

pub use client::Client;
