//! Test harness.
pub mod kube_api;
