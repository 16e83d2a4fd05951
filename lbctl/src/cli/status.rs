//! `lbctl status`: a summary of the agent, and an exit code scripts can wait on (0 once the
//! datapath is loaded and the first sync is done).

use lb_api::proto::StatusReply;

use crate::output::key_value_table;

/// The summary printed on stdout, ready or not.
pub fn summary(status: &StatusReply) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    let datapath = match (status.datapath_loaded, &status.datapath_error) {
        (false, _) => "not loaded".to_owned(),
        (true, None) => "loaded".to_owned(),
        (true, Some(err)) => format!("failed: {err}"),
    };
    let sync = match (status.synced, &status.last_sync_error) {
        (_, Some(err)) => format!("failed: {err}"),
        (true, None) => "ok".to_owned(),
        (false, None) => "waiting for the first sync".to_owned(),
    };
    let services = status.services.to_string();
    let backends = status.backends.to_string();
    let devices = list(&status.devices);
    let pod_devices = list(&status.pod_devices);
    let not_programmed = status.not_programmed.join(", ");
    let mut rows = vec![
        ("Version:", status.version.as_str()),
        ("Node:", status.node_name.as_str()),
        ("Source:", status.source.as_str()),
        ("Datapath:", datapath.as_str()),
        ("Sync:", sync.as_str()),
        ("Services:", services.as_str()),
        ("Backends:", backends.as_str()),
        ("Devices:", devices.as_str()),
        ("Pod devices:", pod_devices.as_str()),
    ];
    if !status.not_programmed.is_empty() {
        // A full map: what the sync left as it was.
        rows.push(("Not programmed:", not_programmed.as_str()));
    }
    key_value_table(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_state_and_counts() {
        let status = StatusReply {
            version: "0.1.0".into(),
            source: "file:/srv/lb".into(),
            node_name: "n1".into(),
            datapath_loaded: true,
            synced: true,
            services: 2,
            backends: 3,
            devices: vec!["eth0".into()],
            pod_devices: vec![],
            last_sync_error: None,
            datapath_error: None,
            not_programmed: vec![],
        };
        assert_eq!(
            summary(&status),
            concat!(
                "Version:       0.1.0\n",
                "Node:          n1\n",
                "Source:        file:/srv/lb\n",
                "Datapath:      loaded\n",
                "Sync:          ok\n",
                "Services:      2\n",
                "Backends:      3\n",
                "Devices:       eth0\n",
                "Pod devices:   none\n",
            )
        );
    }
}
