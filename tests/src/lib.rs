//! Test harness: a loaded datapath programmed through the agent's sync (`fixture`) for
//! `BPF_PROG_TEST_RUN` tables, a faithful fake of the Kubernetes API (`kube_api`), an agent
//! source running as a task (`source`), and for
//! tests with real traffic a node with pods in namespaces (`topology`), lb-agent running on it
//! (`agent`), steady client traffic (`traffic`), and the DaemonSet's pod as podman runs it
//! (`container`). Namespaces, pods, servers and frames are `lb_testkit`'s.

pub mod agent;
pub mod container;
pub mod fixture;
pub mod ipv6;
pub mod kube_api;
pub mod manifests;
pub mod probe;
pub mod source;
pub mod topology;
pub mod traffic;
