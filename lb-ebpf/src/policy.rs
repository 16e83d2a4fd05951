//! External access to ClusterIPs (`bpf-lb-external-clusterip`).
//!
//! Only from-netdev calls this, and before any conntrack entry exists, so a refused packet
//! leaves no state behind; pods may always reach ClusterIPs. Reads `LB_CONFIG` (through
//! `maps::config`); drops with 174 "Is a ClusterIP".

use lb_common::{
    config::{CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig},
    drop::{DropReason, SourceFile},
    service::SERVICE_F_ROUTABLE,
};

use crate::{
    drop::{Dropped, dropped},
    lb::Frontend,
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
