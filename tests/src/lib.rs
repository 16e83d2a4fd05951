//! Test harness: frames (`packet`) and a loaded datapath with its maps (`fixture`) for
//! `BPF_PROG_TEST_RUN` tables, and a faithful fake of the Kubernetes API (`kube_api`).

pub mod fixture;
pub mod kube_api;
pub mod packet;
