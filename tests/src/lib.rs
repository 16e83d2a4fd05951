//! Test harness: a loaded datapath programmed through the agent's sync (`fixture`) for
//! `BPF_PROG_TEST_RUN` tables, a faithful fake of the Kubernetes API (`kube_api`), and for
//! tests with real traffic a node with pods in namespaces (`topology`) and lb-agent running on
//! it (`agent`). Namespaces, pods, servers and frames are `lb_testkit`'s.

pub mod agent;
pub mod fixture;
pub mod kube_api;
pub mod manifests;
pub mod topology;
