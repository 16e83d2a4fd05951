//! `lbctl config view` (sorted `key   value   source` lines, like `cilium config view` with
//! where each value comes from) and `lbctl config set KEY VALUE` (validated by the agent, which
//! applies and persists it, and says what it did).

use lb_api::proto::ConfigEntry;

use crate::output::table;

/// The `config view` listing: key, value in effect, source.
pub fn view(entries: &[ConfigEntry]) -> String {
    let mut sorted: Vec<&ConfigEntry> = entries.iter().collect();
    sorted.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let mut text = String::new();
    for entry in sorted {
        let source = if entry.source.is_empty() {
            "?"
        } else {
            entry.source.as_str()
        };
        text.push_str(&format!("{}\t{}\t{source}\n", entry.key, entry.value));
    }
    table(&text, 0, 3)
}

/// One warning per option that a flag or variable pins against the config directory.
pub fn warnings(entries: &[ConfigEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|entry| {
            let in_dir = entry.overridden_config_dir_value.as_ref()?;
            Some(format!(
                "`{}` is `{}` from the {}, but the config directory (ConfigMap) says `{in_dir}`; \
                 the {} wins until it is removed from lb-agent's command line or environment",
                entry.key, entry.value, entry.source, entry.source
            ))
        })
        .collect()
}

/// `-o json`: one object, keys sorted, each `{value, source}` (and the overridden config-dir
/// value when there is one).
pub fn json(entries: &[ConfigEntry]) -> String {
    let map: std::collections::BTreeMap<&str, serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let mut value = serde_json::json!({ "value": entry.value, "source": entry.source });
            if let Some(in_dir) = &entry.overridden_config_dir_value {
                value["overridden_config_dir_value"] = serde_json::json!(in_dir);
            }
            (entry.key.as_str(), value)
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&map).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, source: &str) -> ConfigEntry {
        ConfigEntry {
            key: key.to_owned(),
            value: value.to_owned(),
            source: source.to_owned(),
            overridden_config_dir_value: None,
        }
    }

    #[test]
    fn view_sorts_and_aligns_value_and_source() {
        let entries = [
            entry("socket", "/var/run/lb/lb.sock", "flag"),
            entry("bpf-lb-external-clusterip", "false", "config-dir"),
            entry("node-ip", "", "default"),
        ];
        assert_eq!(
            view(&entries),
            concat!(
                "bpf-lb-external-clusterip   false                 config-dir\n",
                "node-ip                                           default\n",
                "socket                      /var/run/lb/lb.sock   flag\n",
            )
        );
    }

    #[test]
    fn a_flag_overriding_the_config_dir_is_a_warning() {
        let mut pinned = entry("bpf-lb-external-clusterip", "false", "flag");
        pinned.overridden_config_dir_value = Some("true".to_owned());
        assert_eq!(
            warnings(&[pinned, entry("devices", "eth0", "flag")]),
            [
                "`bpf-lb-external-clusterip` is `false` from the flag, but the config directory \
              (ConfigMap) says `true`; the flag wins until it is removed from lb-agent's command \
              line or environment"
            ]
        );
    }
}
