//! lb-agent's interfaces to the outside: the unix-socket API `lbctl` uses ([`server`], on
//! the protocol of the `lb-api` crate, re-exported as [`proto`]) and the HTTP endpoint for
//! Prometheus and probes ([`http`]), whose metrics [`metrics`] declares and renders; [`rows`]
//! turns the maps of both address families into the rows `lbctl` prints.
//!
//! The agent's state reaches both through one trait, [`server::ApiBackend`].

mod accept;
pub mod http;
pub mod metrics;
pub mod rows;
pub mod server;

pub use lb_api::proto;
