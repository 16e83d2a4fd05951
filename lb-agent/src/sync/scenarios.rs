//! Desired services the tests of `sync/` walk through (tests only): a service scaling out with a
//! backend draining, a second frontend, a frontend losing every backend, then nothing.
use std::net::Ipv4Addr;

use crate::model::{
    BackendState::{self, Active, Terminating},
    DesiredBackend, DesiredService, Frontend, FrontendKind, Protocol,
};

/// A TCP service on `vip:port` with `backends` as (address, port, state).
pub fn service(
    vip: [u8; 4],
    port: u16,
    backends: &[([u8; 4], u16, BackendState)],
) -> DesiredService {
    DesiredService {
        namespace: "default".into(),
        name: format!("svc-{}", vip[3]),
        port_name: String::new(),
        frontend: Frontend {
            vip: Ipv4Addr::from(vip),
            port,
            protocol: Protocol::Tcp,
        },
        kind: FrontendKind::ClusterIp,
        local_only: false,
        backends: backends
            .iter()
            .map(|(addr, port, state)| DesiredBackend {
                addr: Ipv4Addr::from(*addr),
                port: *port,
                state: *state,
                remote: false,
            })
            .collect(),
        has_any_endpoints: !backends.is_empty(),
        affinity_timeout_secs: None,
        source_ranges: None,
        algorithm: None,
    }
}

/// Five successive desired states, ending with no service at all.
pub fn all() -> Vec<Vec<DesiredService>> {
    vec![
        vec![service(
            [10, 96, 0, 10],
            80,
            &[
                ([10, 244, 1, 5], 8080, Active),
                ([10, 244, 1, 6], 8080, Active),
            ],
        )],
        vec![service(
            [10, 96, 0, 10],
            80,
            &[
                ([10, 244, 1, 6], 8080, Active),
                ([10, 244, 1, 7], 8080, Active),
                ([10, 244, 1, 5], 8080, Terminating),
            ],
        )],
        vec![
            service([10, 96, 0, 10], 80, &[([10, 244, 1, 7], 8080, Active)]),
            service([10, 96, 0, 11], 53, &[([10, 244, 2, 1], 53, Active)]),
        ],
        vec![service([10, 96, 0, 11], 53, &[])],
        vec![],
    ]
}

/// A xorshift generator: deterministic, and enough for choosing among a few options.
pub struct Rng(pub u64);

impl Rng {
    /// A number in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}
