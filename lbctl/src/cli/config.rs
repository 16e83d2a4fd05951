//! `lbctl config view` (sorted `key   value` lines, like `cilium config view`) and
//! `lbctl config set KEY VALUE` (validated by the agent, which applies and persists it).

use crate::output::key_value_table;

/// The `config view` listing.
pub fn view(options: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = options
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    sorted.sort_unstable();
    key_value_table(sorted)
}

/// `-o json`: one object, keys sorted.
pub fn json(options: &[(String, String)]) -> String {
    let map: std::collections::BTreeMap<&str, &str> = options
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let mut text = serde_json::to_string_pretty(&map).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_sorts_and_aligns() {
        let options = [
            ("socket".to_owned(), "/var/run/lb/lb.sock".to_owned()),
            ("bpf-lb-external-clusterip".to_owned(), "false".to_owned()),
            ("node-ip".to_owned(), String::new()),
        ];
        assert_eq!(
            view(&options),
            concat!(
                "bpf-lb-external-clusterip   false\n",
                "node-ip                     \n",
                "socket                      /var/run/lb/lb.sock\n",
            )
        );
    }
}
