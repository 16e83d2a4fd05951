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
    let source = if status.source_state.is_empty() {
        status.source.clone()
    } else {
        format!("{} ({})", status.source, status.source_state)
    };
    let last_sync = match status.last_sync_age_seconds {
        Some(age) => format!("{} ago", age_text(age)),
        None => "never".to_owned(),
    };
    let malformed = status.malformed_objects.to_string();
    let maps: Vec<String> = status
        .maps
        .iter()
        .map(|map| {
            let percent = if map.max_entries == 0 {
                0.0
            } else {
                map.entries as f64 * 100.0 / map.max_entries as f64
            };
            format!(
                "{} {}/{} ({percent:.1}%)",
                map.name, map.entries, map.max_entries
            )
        })
        .collect();
    let programs: Vec<String> = status
        .programs
        .iter()
        .map(|program| format!("{} {}", program.iface, program.hook))
        .collect();
    let mut rows = vec![
        ("Version:", status.version.as_str()),
        ("Node:", status.node_name.as_str()),
        ("Source:", source.as_str()),
        ("Datapath:", datapath.as_str()),
        ("Sync:", sync.as_str()),
        ("Last sync:", last_sync.as_str()),
        ("Services:", services.as_str()),
        ("Backends:", backends.as_str()),
        ("Malformed objects:", malformed.as_str()),
        ("Devices:", devices.as_str()),
        ("Pod devices:", pod_devices.as_str()),
    ];
    if !status.not_programmed.is_empty() {
        // A full map: what the sync left as it was.
        rows.push(("Not programmed:", not_programmed.as_str()));
    }
    // One line per map and per attached program, the label on the first.
    for (label, lines) in [("Maps:", &maps), ("Programs:", &programs)] {
        for (index, line) in lines.iter().enumerate() {
            rows.push((if index == 0 { label } else { "" }, line.as_str()));
        }
    }
    key_value_table(rows)
}

/// `-o json`: the whole status as an indented JSON object.
pub fn json(status: &StatusReply) -> String {
    let mut text = serde_json::to_string_pretty(status).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

/// An age as an operator reads it: `850ms`, `12s`, `4m12s`, `3h05m`.
fn age_text(seconds: f64) -> String {
    if seconds < 1.0 {
        return format!("{}ms", (seconds * 1000.0) as u64);
    }
    let secs = seconds as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_state_counts_maps_and_programs() {
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
            source_state: "readable".into(),
            last_sync_age_seconds: Some(252.4),
            malformed_objects: 1,
            maps: vec![lb_api::proto::MapFill {
                name: "LB4_SERVICES".into(),
                entries: 7,
                max_entries: 1024,
            }],
            programs: vec![
                lb_api::proto::AttachedProgram {
                    iface: "eth0".into(),
                    hook: "from-netdev".into(),
                },
                lb_api::proto::AttachedProgram {
                    iface: "lxc1".into(),
                    hook: "from-pod".into(),
                },
            ],
        };
        assert_eq!(
            summary(&status),
            concat!(
                "Version:             0.1.0\n",
                "Node:                n1\n",
                "Source:              file:/srv/lb (readable)\n",
                "Datapath:            loaded\n",
                "Sync:                ok\n",
                "Last sync:           4m12s ago\n",
                "Services:            2\n",
                "Backends:            3\n",
                "Malformed objects:   1\n",
                "Devices:             eth0\n",
                "Pod devices:         none\n",
                "Maps:                LB4_SERVICES 7/1024 (0.7%)\n",
                "Programs:            eth0 from-netdev\n",
                "                     lxc1 from-pod\n",
            )
        );
        let json: serde_json::Value = serde_json::from_str(&json(&status)).expect("JSON");
        assert_eq!(json["maps"][0]["entries"], 7);
        assert_eq!(json["programs"][1]["iface"], "lxc1");
        assert_eq!(json["last_sync_age_seconds"], 252.4);
    }

    #[test]
    fn ages_read_in_the_largest_sensible_unit() {
        assert_eq!(age_text(0.25), "250ms");
        assert_eq!(age_text(12.9), "12s");
        assert_eq!(age_text(3725.0), "1h02m");
    }
}
