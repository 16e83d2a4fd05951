//! The server-side filter kube-proxy applies to Services and EndpointSlices.
//!
//! The model applies the same rule client-side (the file source has no server), using the
//! label names in `model::frontend`; a unit test keeps the two in step.

/// Leaves out objects another proxy claims and headless Services' slices (k8s-semantics.md §1).
pub const LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};

    #[test]
    fn selector_excludes_exactly_the_model_opt_out_labels() {
        assert_eq!(
            LABEL_SELECTOR,
            format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}")
        );
    }
}
