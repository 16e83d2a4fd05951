//! Pieces of the YAML the file-source tests write, as `kubectl get -o yaml` prints them.
use std::net::Ipv4Addr;

/// An EndpointSlice `endpoints` entry for `ip` on node `node`: ready, or (`ready` false)
/// serving but terminating, as a pod being deleted is.
pub fn endpoint(ip: Ipv4Addr, node: &str, ready: bool) -> String {
    format!(
        "- addresses:\n  - {ip}\n  conditions:\n    ready: {ready}\n    serving: true\n    \
         terminating: {}\n  nodeName: {node}\n",
        !ready
    )
}
