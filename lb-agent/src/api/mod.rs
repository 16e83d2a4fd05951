//! lb-agent's interfaces to the outside: the unix-socket API `lbctl` uses ([`server`],
//! [`client`], [`proto`]) and the HTTP endpoint for Prometheus and probes ([`http`]).
//!
//! The agent's state reaches both through one trait, [`server::ApiBackend`].

mod accept;
pub mod client;
pub mod http;
pub mod proto;
pub mod server;
