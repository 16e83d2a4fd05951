//! One Service/EndpointSlice fixture, rendered three ways: the agent's desired services (lb),
//! an `iptables-restore` file and an `nft -f` file, both in kube-proxy's own rule shapes.
//!
//! Service `i` (0-based) is `bench/svc-i`, ClusterIP `10.96.0.0 + i + 1`, port 80/TCP (80/UDP
//! in the `*_for(Protocol::Udp)` renderings, for the forwarding rate), with
//! `backends` endpoints on port 8080 at `10.128.0.0 + i * backends + j + 1` (a /9 that the
//! backend namespace answers for as a whole). The *last-inserted* service is the target.
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use lb_agent::model::{
    BackendState, DesiredBackend, DesiredService, Frontend, FrontendKind, Protocol,
};

/// Port of every frontend.
pub const SERVICE_PORT: u16 = 80;
/// Port of every backend.
pub const BACKEND_PORT: u16 = 8080;
/// Cluster (pod) CIDR: kube-proxy masquerades ClusterIP traffic from outside it.
pub const CLUSTER_CIDR: &str = "10.0.0.0/8";
/// Where backends live: routed to, and answered for by, the backend namespace.
pub const BACKEND_NET: &str = "10.128.0.0/9";
const VIP_BASE: u32 = 0x0a60_0000; // 10.96.0.0
const BACKEND_BASE: u32 = 0x0a80_0000; // 10.128.0.0

/// N services × M backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixture {
    /// Number of services.
    pub services: u32,
    /// Backends per service.
    pub backends: u32,
}

/// One endpoint change: the target service's first backend moves to another address.
#[derive(Clone, Copy, Debug)]
pub struct EndpointChange {
    /// Address before.
    pub from: Ipv4Addr,
    /// Address after.
    pub to: Ipv4Addr,
}

impl Fixture {
    /// ClusterIP of service `i`.
    pub fn vip(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(VIP_BASE + i + 1)
    }

    /// Address of backend `j` of service `i`.
    pub fn backend(self, i: u32, j: u32) -> Ipv4Addr {
        Ipv4Addr::from(BACKEND_BASE + i * self.backends + j + 1)
    }

    /// An address outside every service's backends, for endpoint changes.
    pub fn spare_backend(self, k: u32) -> Ipv4Addr {
        Ipv4Addr::from(BACKEND_BASE + self.services * self.backends + k + 1)
    }

    /// Index of the last-inserted service.
    pub fn target(self) -> u32 {
        self.services - 1
    }

    /// The agent's desired services (what `model::desired_services` yields for the fixture).
    pub fn desired(self) -> Vec<DesiredService> {
        self.desired_for(Protocol::Tcp)
    }

    /// [`Fixture::desired`] with every frontend on `protocol`.
    pub fn desired_for(self, protocol: Protocol) -> Vec<DesiredService> {
        (0..self.services)
            .map(|i| DesiredService {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port_name: String::new(),
                frontend: Frontend {
                    vip: Self::vip(i).into(),
                    port: SERVICE_PORT,
                    protocol,
                },
                kind: FrontendKind::ClusterIp,
                local_only: false,
                backends: (0..self.backends)
                    .map(|j| DesiredBackend {
                        addr: self.backend(i, j).into(),
                        port: BACKEND_PORT,
                        state: BackendState::Active,
                        remote: false,
                    })
                    .collect(),
                has_any_endpoints: true,
                affinity_timeout_secs: None,
                source_ranges: None,
                algorithm: None,
            })
            .collect()
    }

    /// Service `i` as the API server serves it.
    pub fn service_object(i: u32) -> serde_json::Value {
        let vip = Self::vip(i).to_string();
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench", "resourceVersion": "1"},
            "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip],
                     "ports": [{"port": SERVICE_PORT, "protocol": "TCP", "targetPort": BACKEND_PORT}]}
        })
    }

    /// Service `i`'s EndpointSlice with `addresses` (all ready), at `resource_version`.
    pub fn slice_object(
        i: u32,
        addresses: &[Ipv4Addr],
        resource_version: u64,
    ) -> serde_json::Value {
        let endpoints: Vec<serde_json::Value> = addresses
            .iter()
            .map(|addr| {
                serde_json::json!({"addresses": [addr.to_string()],
                                   "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
                         "resourceVersion": resource_version.to_string(),
                         "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "", "port": BACKEND_PORT, "protocol": "TCP"}]
        })
    }

    /// Service `i`'s backend addresses.
    pub fn backends_of(self, i: u32) -> Vec<Ipv4Addr> {
        (0..self.backends).map(|j| self.backend(i, j)).collect()
    }

    /// The `iptables-restore` input kube-proxy (iptables mode) writes for the fixture's nat
    /// table: KUBE-SERVICES → KUBE-SVC-* (statistic random) → KUBE-SEP-* (DNAT), with the
    /// masquerade marking rules. The filter table is left out: it has no per-service rules on
    /// the ClusterIP path.
    pub fn iptables(self) -> String {
        self.iptables_for(Protocol::Tcp)
    }

    /// [`Fixture::iptables`] with every service on `protocol`.
    pub fn iptables_for(self, protocol: Protocol) -> String {
        let mut out =
            String::with_capacity(self.services as usize * (300 + 250 * self.backends as usize));
        out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
        out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
        for i in 0..self.services {
            let _ = writeln!(out, ":{} - [0:0]", svc_chain(i, protocol));
            for j in 0..self.backends {
                let _ = writeln!(out, ":{} - [0:0]", sep_chain(self.backend(i, j)));
            }
        }
        out.push_str(IPTABLES_JUMPS);
        for i in 0..self.services {
            self.iptables_service_chains(i, None, protocol, &mut out);
        }
        for i in 0..self.services {
            iptables_services_rule(i, protocol, &mut out);
        }
        out.push_str(IPTABLES_NODEPORTS);
        out.push_str("COMMIT\n");
        out
    }

    fn iptables_service_chains(
        self,
        i: u32,
        change: Option<EndpointChange>,
        protocol: Protocol,
        out: &mut String,
    ) {
        let vip = Self::vip(i);
        let svc = svc_chain(i, protocol);
        let p = l4_name(protocol);
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"bench/svc-{i} cluster IP\" -m {p} -p {p} -d {vip}/32 --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        );
        let endpoints: Vec<Ipv4Addr> = (0..self.backends)
            .map(|j| {
                let addr = self.backend(i, j);
                match change {
                    Some(change) if change.from == addr => change.to,
                    _ => addr,
                }
            })
            .collect();
        let total = endpoints.len();
        for (k, ep) in endpoints.iter().enumerate() {
            let sep = sep_chain(*ep);
            let remaining = total - k;
            if remaining > 1 {
                let _ = writeln!(
                    out,
                    "-A {svc} -m comment --comment \"bench/svc-{i} -> {ep}:{BACKEND_PORT}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / remaining as f64
                );
            } else {
                let _ = writeln!(
                    out,
                    "-A {svc} -m comment --comment \"bench/svc-{i} -> {ep}:{BACKEND_PORT}\" -j {sep}"
                );
            }
        }
        for ep in &endpoints {
            let sep = sep_chain(*ep);
            let _ = writeln!(
                out,
                "-A {sep} -m comment --comment bench/svc-{i} -s {ep}/32 -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                out,
                "-A {sep} -m comment --comment bench/svc-{i} -m {p} -p {p} -j DNAT --to-destination {ep}:{BACKEND_PORT}"
            );
        }
    }

    /// What kube-proxy (with MinimizeIPTablesRestore) hands `iptables-restore --noflush` for
    /// one endpoint change: the whole KUBE-SERVICES chain, the changed KUBE-SVC chain, the new
    /// KUBE-SEP chain, and the old one deleted.
    pub fn iptables_change(self, change: EndpointChange) -> String {
        let t = self.target();
        let mut out = String::with_capacity(self.services as usize * 160);
        out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n");
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(t, Protocol::Tcp));
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(change.to));
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(change.from));
        for i in 0..self.services {
            iptables_services_rule(i, Protocol::Tcp, &mut out);
        }
        out.push_str(IPTABLES_NODEPORTS);
        let mut chains = String::new();
        self.iptables_service_chains(t, Some(change), Protocol::Tcp, &mut chains);
        // Only the new endpoint's chain and the service chain are rewritten.
        let keep_sep = sep_chain(change.to);
        let svc = svc_chain(t, Protocol::Tcp);
        for line in chains.lines() {
            if line.starts_with(&format!("-A {svc} "))
                || line.starts_with(&format!("-A {keep_sep} "))
            {
                out.push_str(line);
                out.push('\n');
            }
        }
        let _ = writeln!(out, "-X {}", sep_chain(change.from));
        out.push_str("COMMIT\n");
        out
    }

    /// The `nft -f` input kube-proxy (nftables mode) writes for the fixture: table
    /// `ip kube-proxy`, the `service-ips` verdict map, one chain per service (numgen random) and
    /// one per endpoint (DNAT).
    pub fn nftables(self) -> String {
        self.nftables_as(false, Protocol::Tcp)
    }

    /// Like [`Fixture::nftables`], except that a service with one endpoint jumps to it with
    /// `goto` instead of through a one-element anonymous `numgen` vmap. The packet path is the
    /// same lookups, but it loads in seconds instead of minutes at 30k services: every
    /// anonymous set makes the kernel scan all the table's sets to name it (quadratic).
    pub fn nftables_fast(self) -> String {
        self.nftables_fast_for(Protocol::Tcp)
    }

    /// [`Fixture::nftables_fast`] with every service on `protocol`.
    pub fn nftables_fast_for(self, protocol: Protocol) -> String {
        self.nftables_as(true, protocol)
    }

    fn nftables_as(self, fast: bool, protocol: Protocol) -> String {
        let mut out =
            String::with_capacity(self.services as usize * (500 + 400 * self.backends as usize));
        out.push_str(NFT_BASE);
        for i in 0..self.services {
            self.nft_service(i, None, fast, protocol, &mut out);
        }
        for i in 0..self.services {
            let _ = writeln!(
                out,
                "add element ip kube-proxy service-ips {{ {} . {} . {SERVICE_PORT} : goto {} }}",
                Self::vip(i),
                l4_name(protocol),
                nft_service_chain(i, protocol)
            );
        }
        out
    }

    fn nft_service(
        self,
        i: u32,
        change: Option<EndpointChange>,
        fast: bool,
        protocol: Protocol,
        out: &mut String,
    ) {
        let chain = nft_service_chain(i, protocol);
        let p = l4_name(protocol);
        let vip = Self::vip(i);
        let endpoints: Vec<Ipv4Addr> = (0..self.backends)
            .map(|j| {
                let addr = self.backend(i, j);
                match change {
                    Some(change) if change.from == addr => change.to,
                    _ => addr,
                }
            })
            .collect();
        for ep in &endpoints {
            if change.is_some_and(|c| c.to != *ep) {
                continue;
            }
            let epc = nft_endpoint_chain(i, *ep, protocol);
            let _ = writeln!(out, "add chain ip kube-proxy {epc}");
            let _ = writeln!(out, "flush chain ip kube-proxy {epc}");
            let _ = writeln!(
                out,
                "add rule ip kube-proxy {epc} ip saddr {ep} jump mark-for-masquerade"
            );
            let _ = writeln!(
                out,
                "add rule ip kube-proxy {epc} meta l4proto {p} dnat to {ep}:{BACKEND_PORT}"
            );
        }
        let _ = writeln!(out, "add chain ip kube-proxy {chain}");
        let _ = writeln!(out, "flush chain ip kube-proxy {chain}");
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {chain} ip daddr {vip} {p} dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
        );
        if fast && endpoints.len() == 1 {
            let _ = writeln!(
                out,
                "add rule ip kube-proxy {chain} goto {}",
                nft_endpoint_chain(i, endpoints[0], protocol)
            );
            return;
        }
        let vmap: Vec<String> = endpoints
            .iter()
            .enumerate()
            .map(|(k, ep)| format!("{k} : goto {}", nft_endpoint_chain(i, *ep, protocol)))
            .collect();
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {chain} numgen random mod {} vmap {{ {} }}",
            endpoints.len(),
            vmap.join(" , ")
        );
    }

    /// What kube-proxy (nftables mode) hands `nft -f` for one endpoint change: the new
    /// endpoint chain, the service chain rewritten, the old endpoint chain deleted.
    pub fn nftables_change(self, change: EndpointChange) -> String {
        let t = self.target();
        let mut out = String::new();
        self.nft_service(t, Some(change), false, Protocol::Tcp, &mut out);
        let _ = writeln!(
            out,
            "delete chain ip kube-proxy {}",
            nft_endpoint_chain(t, change.from, Protocol::Tcp)
        );
        out
    }
}

fn iptables_services_rule(i: u32, protocol: Protocol, out: &mut String) {
    let p = l4_name(protocol);
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"bench/svc-{i} cluster IP\" -m {p} -p {p} -d {}/32 --dport {SERVICE_PORT} -j {}",
        Fixture::vip(i),
        svc_chain(i, protocol)
    );
}

const IPTABLES_JUMPS: &str = "\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
";

const IPTABLES_NODEPORTS: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";

const NFT_BASE: &str = "\
add table ip kube-proxy { comment \"rules for kube-proxy\" ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy services
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
";

/// kube-proxy names chains after a hash of the service port; any stable hash will do here.
fn hash16(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..16)
        .map(|k| char::from(ALPHABET[((h >> ((k * 4) % 60)) as usize + k) % 32]))
        .collect()
}

/// `tcp` or `udp`, as iptables, nft and kube-proxy's chain names spell it.
fn l4_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn svc_chain(i: u32, protocol: Protocol) -> String {
    let p = l4_name(protocol);
    format!("KUBE-SVC-{}", hash16(&format!("bench/svc-{i}:{p}")))
}

fn sep_chain(ep: Ipv4Addr) -> String {
    format!("KUBE-SEP-{}", hash16(&format!("ep/{ep}:{BACKEND_PORT}")))
}

fn nft_service_chain(i: u32, protocol: Protocol) -> String {
    let p = l4_name(protocol);
    format!(
        "service-{}-bench/svc-{i}/{p}/",
        &hash16(&format!("bench/svc-{i}:{p}"))[..8]
    )
}

fn nft_endpoint_chain(i: u32, ep: Ipv4Addr, protocol: Protocol) -> String {
    let p = l4_name(protocol);
    format!(
        "endpoint-{}-bench/svc-{i}/{p}/__{ep}/{BACKEND_PORT}",
        &hash16(&format!("ep/{ep}:{BACKEND_PORT}"))[..8]
    )
}
