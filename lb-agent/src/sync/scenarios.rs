//! Desired services the tests of `sync/` walk through (tests only): a service scaling out with a
//! backend draining, a second frontend, a frontend losing every backend, then nothing.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
            vip: Ipv4Addr::from(vip).into(),
            port,
            protocol: Protocol::Tcp,
        },
        kind: FrontendKind::ClusterIp,
        local_only: false,
        backends: backends
            .iter()
            .map(|(addr, port, state)| DesiredBackend {
                addr: Ipv4Addr::from(*addr).into(),
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

/// `addr` in IPv6: `fd00::a.b.c.d` (the IPv4 address in the low 32 bits).
pub fn v6(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V6(Ipv6Addr::from(
            (0xfd00_u128 << 112) | u128::from(u32::from(v4)),
        )),
        v6 => v6,
    }
}

/// `service` in IPv6: its VIP, backends and source ranges moved to `fd00::/96` by [`v6`].
pub fn in_v6(mut service: DesiredService) -> DesiredService {
    service.frontend.vip = v6(service.frontend.vip);
    for backend in &mut service.backends {
        backend.addr = v6(backend.addr);
    }
    for range in service.source_ranges.iter_mut().flatten() {
        *range =
            crate::model::SourceRange::new(v6(range.addr), range.prefix_len + 96).unwrap_or(*range);
    }
    service
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
