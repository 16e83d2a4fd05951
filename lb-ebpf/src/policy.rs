//! Who may open a flow from outside the cluster: external access to ClusterIPs
//! (`bpf-lb-external-clusterip`) and load balancers' source ranges
//! (`loadBalancerSourceRanges`).
//!
//! Only from-netdev calls this, and before any conntrack entry exists, so a refused packet
//! leaves no state behind; pods are never checked (Cilium: source ranges apply to external
//! traffic only), and flows already tracked go on. Reads `LB_CONFIG` (through `maps::config`)
//! and `LB4_SRC_RANGE`; drops with 174 "Is a ClusterIP" and 177 "Denied by LB src range
//! check".

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    config::{CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig},
    drop::{DropReason, SourceFile},
    service::{
        SERVICE_F_ROUTABLE, SERVICE_F2_SOURCE_RANGE, SOURCE_RANGE_PREFIX_BITS, SourceRangeKey4,
    },
};

use crate::{
    drop::{Dropped, dropped},
    lb::Frontend,
    maps::LB4_SRC_RANGE,
};

const FILE: SourceFile = SourceFile::Policy;

/// Fails with 174 when a packet from outside the cluster addresses a frontend that is not
/// routable, unless the configuration makes every ClusterIP routable.
#[inline(always)]
pub fn check_external_access(frontend: &Frontend, config: &DatapathConfig) -> Result<(), Dropped> {
    let routable = frontend.entry.flags & SERVICE_F_ROUTABLE != 0
        || config.flags & CONFIG_F_EXTERNAL_CLUSTER_IP != 0;
    if !routable {
        return Err(dropped!(DropReason::IsClusterIp));
    }
    Ok(())
}

/// Fails with 177 when `frontend` admits only listed client prefixes and none contains
/// `client` (network byte order). Frontends without source ranges cost one flag test.
#[inline(always)]
pub fn check_source_range(frontend: &Frontend, client: u32) -> Result<(), Dropped> {
    if frontend.entry.flags2 & SERVICE_F2_SOURCE_RANGE == 0 {
        return Ok(());
    }
    let key = Key::new(
        SOURCE_RANGE_PREFIX_BITS + 32,
        SourceRangeKey4 {
            rev_nat: frontend.entry.rev_nat,
            addr: client,
        },
    );
    if LB4_SRC_RANGE.get(&key).is_none() {
        return Err(dropped!(DropReason::NotInSrcRange));
    }
    Ok(())
}
