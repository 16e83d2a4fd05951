//! `policy.rs` for IPv6 frontends: external access to ClusterIPs (174 "Is a ClusterIP" unless
//! the frontend is routable or `CONFIG_F_EXTERNAL_CLUSTER_IP` is set) and
//! `loadBalancerSourceRanges` (177, through `LB6_SRC_RANGE`, the only module that reads it).
//! Called by from-netdev only, before any conntrack entry exists.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    Addr6,
    config::{CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig},
    drop::{DropReason, SourceFile},
    service::{
        SERVICE_F_ROUTABLE, SERVICE_F2_SOURCE_RANGE, SOURCE_RANGE_PREFIX_BITS, SourceRangeKey6,
    },
};

use crate::{
    drop::{Dropped, dropped},
    lb6::Frontend6,
    maps::LB6_SRC_RANGE,
};

const FILE: SourceFile = SourceFile::Policy6;

/// Fails with 174 when a packet from outside addresses a frontend that is not routable,
/// unless the configuration makes every ClusterIP routable.
#[inline(always)]
pub fn check_external_access(frontend: &Frontend6, config: &DatapathConfig) -> Result<(), Dropped> {
    let routable = frontend.entry.flags & SERVICE_F_ROUTABLE != 0
        || config.flags & CONFIG_F_EXTERNAL_CLUSTER_IP != 0;
    if !routable {
        return Err(dropped!(DropReason::IsClusterIp));
    }
    Ok(())
}

/// Fails with 177 when `frontend` admits only listed client prefixes and none contains
/// `client`.
#[inline(always)]
pub fn check_source_range(frontend: &Frontend6, client: &Addr6) -> Result<(), Dropped> {
    if frontend.entry.flags2 & SERVICE_F2_SOURCE_RANGE == 0 {
        return Ok(());
    }
    let key = Key::new(
        SOURCE_RANGE_PREFIX_BITS + 128,
        SourceRangeKey6 {
            rev_nat: frontend.entry.rev_nat,
            addr: *client,
        },
    );
    if LB6_SRC_RANGE.get(&key).is_none() {
        return Err(dropped!(DropReason::NotInSrcRange));
    }
    Ok(())
}
