//! Test harness: frames (`packet`) and a loaded datapath with its maps (`fixture`) for
//! `BPF_PROG_TEST_RUN` tables, a faithful fake of the Kubernetes API (`kube_api`), and for
//! tests with real traffic a node with pods in namespaces (`topology`) and lb-agent running on
//! it (`agent`).

pub mod agent;
pub mod fixture;
pub mod kube_api;
pub mod packet;
pub mod topology;
