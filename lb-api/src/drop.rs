//! The text of drop reasons, hooks and drop-site files as operators read it, from the numbers a
//! `DropEventRecord` or a drop counter carries. `lbctl monitor` prints it, the agent's
//! `/metrics` uses it as labels; both get the same words from `lb_common::drop`'s one table.

use lb_common::drop::{DropReason, Hook, SourceFile};

/// The reason as Cilium prints it: its message, or its number when lb does not know it.
pub fn reason_text(reason: u8) -> String {
    match DropReason::from_u8(reason) {
        Some(known) => known.message().to_owned(),
        None => reason.to_string(),
    }
}

/// The hook's name (`from-netdev`, `from-pod`), or its number when unknown.
pub fn hook_text(hook: u8) -> String {
    match Hook::from_u8(hook) {
        Some(known) => known.name().to_owned(),
        None => hook.to_string(),
    }
}

/// The drop site's file name (`policy.rs`), or `unknown`.
pub fn file_text(file: u8) -> &'static str {
    SourceFile::from_u8(file).name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers_print_as_words_unknown_ones_as_numbers() {
        assert_eq!(reason_text(DropReason::IsClusterIp as u8), "Is a ClusterIP");
        assert_eq!(reason_text(199), "199");
        assert_eq!(hook_text(Hook::FromPod as u8), "from-pod");
        assert_eq!(hook_text(250), "250");
        assert_eq!(file_text(SourceFile::Lb as u8), "lb.rs");
        assert_eq!(file_text(250), "unknown");
    }
}
