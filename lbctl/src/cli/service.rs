//! `lbctl service list [-o json]`: Cilium's `service list` layout.
//!
//! Columns `ID  Frontend  Service Type  Backend` through tabwriter (minwidth 5, padding 3),
//! rows sorted by id, the first backend on the service's row and each further one on its own
//! line with the first three columns blank, each as `N => addr:port/PROTO (state)` where N is
//! the backend's id, as in `-o json` and `lbctl bpf ct list`. The Service Type cell adds the
//! flags (`NodePort, Local`); the Service's namespace/name is in `-o json`. Unlike Cilium's,
//! lines carry no trailing padding.

use lb_api::proto::ServiceRow;

use crate::output::table as aligned;

/// The table, ready to print.
pub fn table(services: &[ServiceRow]) -> String {
    let mut sorted: Vec<&ServiceRow> = services.iter().collect();
    sorted.sort_by_key(|service| service.id);

    let mut text = String::from("ID\tFrontend\tService Type\tBackend\t\n");
    for service in sorted {
        let mut backends = service.backends.iter().map(|backend| {
            format!(
                "{} => {} ({})",
                backend.id,
                backend.address,
                backend.state.as_str()
            )
        });
        let first = backends.next().unwrap_or_default();
        // `NodePort` or, with flags, `NodePort, Local` (as `cilium bpf lb list` prints them).
        let service_type = std::iter::once(service.service_type.as_str())
            .chain(service.flags.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ");
        text.push_str(&format!(
            "{}\t{}\t{service_type}\t{first}\t\n",
            service.id, service.frontend
        ));
        for backend in backends {
            text.push_str(&format!("\t\t\t{backend}\t\n"));
        }
    }
    aligned(&text, 5, 3)
}

/// `-o json`: the services as an indented JSON array, sorted by id.
pub fn json(services: &[ServiceRow]) -> String {
    let mut sorted = services.to_vec();
    sorted.sort_by_key(|service| service.id);
    let mut text = serde_json::to_string_pretty(&sorted).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::proto::{BackendRow, BackendState};

    fn service(id: u32, frontend: &str, backends: &[(u32, &str, BackendState)]) -> ServiceRow {
        ServiceRow {
            id,
            frontend: frontend.into(),
            service_type: "ClusterIP".into(),
            name: String::new(),
            flags: Vec::new(),
            backends: backends
                .iter()
                .map(|(id, address, state)| BackendRow {
                    id: *id,
                    address: (*address).into(),
                    state: *state,
                })
                .collect(),
        }
    }

    #[test]
    fn one_service_one_backend() {
        // Widths by hand: ID max(5, 2+3) = 5; Frontend 19+3 = 22; Service Type 12+3 = 15;
        // Backend last, unpadded (no trailing spaces).
        let services = [service(
            1,
            "10.96.229.67:80/TCP",
            &[(1, "10.112.1.194:80/TCP", BackendState::Active)],
        )];
        assert_eq!(
            table(&services),
            concat!(
                "ID   Frontend              Service Type   Backend\n",
                "1    10.96.229.67:80/TCP   ClusterIP      1 => 10.112.1.194:80/TCP (active)\n",
            )
        );
    }

    #[test]
    fn further_backends_go_on_their_own_lines_and_rows_sort_by_id() {
        // Cilium's documented example for the first service.
        let services = [
            service(
                7,
                "10.96.0.1:443/TCP",
                &[(9, "192.168.56.2:6443/TCP", BackendState::Terminating)],
            ),
            service(
                2,
                "10.96.0.10:53/UDP",
                &[
                    (4, "10.244.1.42:53/UDP", BackendState::Active),
                    (5, "10.244.2.17:53/UDP", BackendState::Active),
                ],
            ),
            service(12, "10.96.100.1:8080/TCP", &[]),
        ];
        assert_eq!(
            table(&services),
            concat!(
                "ID   Frontend               Service Type   Backend\n",
                "2    10.96.0.10:53/UDP      ClusterIP      4 => 10.244.1.42:53/UDP (active)\n",
                "                                           5 => 10.244.2.17:53/UDP (active)\n",
                "7    10.96.0.1:443/TCP      ClusterIP      9 => 192.168.56.2:6443/TCP (terminating)\n",
                "12   10.96.100.1:8080/TCP   ClusterIP\n",
            )
        );
    }

    #[test]
    fn ipv6_frontends_and_backends_print_in_brackets_as_cilium_does() {
        // A dual-stack Service: one id per family's frontend, IPv6 addresses as
        // `[addr]:port/PROTO`.
        let services = [
            service(
                1,
                "10.96.229.67:80/TCP",
                &[(1, "10.112.1.194:80/TCP", BackendState::Active)],
            ),
            service(
                4,
                "[fd00:96::e5:43]:80/TCP",
                &[
                    (5, "[fd00:10:112:1::c2]:80/TCP", BackendState::Active),
                    (6, "[fd00:10:112:1::5a]:80/TCP", BackendState::Active),
                ],
            ),
        ];
        assert_eq!(
            table(&services),
            concat!(
                "ID   Frontend                  Service Type   Backend\n",
                "1    10.96.229.67:80/TCP       ClusterIP      1 => 10.112.1.194:80/TCP (active)\n",
                "4    [fd00:96::e5:43]:80/TCP   ClusterIP      5 => [fd00:10:112:1::c2]:80/TCP (active)\n",
                "                                              6 => [fd00:10:112:1::5a]:80/TCP (active)\n",
            )
        );
    }

    #[test]
    fn no_services_prints_the_header() {
        assert_eq!(table(&[]), "ID   Frontend   Service Type   Backend\n");
    }

    #[test]
    fn json_lists_ids_and_states() {
        let services = [service(
            1,
            "10.96.229.67:80/TCP",
            &[(3, "10.112.1.194:80/TCP", BackendState::Terminating)],
        )];
        assert_eq!(
            json(&services),
            r#"[
  {
    "id": 1,
    "frontend": "10.96.229.67:80/TCP",
    "type": "ClusterIP",
    "name": "",
    "backends": [
      {
        "id": 3,
        "address": "10.112.1.194:80/TCP",
        "state": "terminating"
      }
    ]
  }
]
"#
        );
    }
}
