//! B4: the forwarding rate. UDP packets per second forwarded from a client namespace through
//! the node to a backend (lb, kube-proxy's iptables and nftables rule sets, and no rules), and
//! TCP throughput with iperf3 through lb's DNAT path and its SNAT path against the same
//! topologies without rules.
//!
//! ```text
//! UDP, one chain per variant and size (the addresses of traffic.rs):
//!   client ns eth0 10.0.1.2 ── c0 │ node ns │ b0 ── eth0 10.0.2.2 backend ns
//!   AF_PACKET senders    (lb: from_pod on c0 and b0;        nft netdev ingress on eth0:
//!   (one per CPU)         or kube-proxy's nat rules)        count UDP to :8080, drop
//!
//! TCP (iperf3 -c in the client, iperf3 -s on :8080 in the backend):
//!   direct             client → node (no rules) → backend                 backend:8080
//!   lb DNAT            client → node (from_pod on c0, b0) → backend       VIP:80
//!   direct, 2 nodes    client → node → node2 → backend (plain routing)     backend:8080
//!   lb SNAT            client → node (from_netdev on c0 and n0, SNAT to   VIP:80
//!                      10.0.3.1, FIB redirect) → node2 → backend
//! ```
//!
//! The UDP senders are threads in the client namespace, one per CPU, pinned at nice −10, each
//! with an `AF_PACKET` socket on `eth0` (qdisc bypassed) sending prebuilt frames with
//! `sendmmsg`, 64 at a time, for a fixed time. The frames go to the last-inserted service's
//! VIP:80/UDP (for `direct`, to its backend:8080) from [`FLOWS`] source ports, so after the
//! warm-up every packet belongs to an established flow (lb's conntrack, the kernel's
//! conntrack). What counts is what arrives: an nft `netdev` ingress chain in the backend
//! namespace counts the UDP packets to port 8080 on `eth0` and drops them, so the backend's
//! stack does no further work and sends nothing back. On veths the whole chain runs in the
//! sender's context (`veth_xmit` → `netif_rx`, processed when the sender's syscall re-enables
//! softirqs), so the rate measures sender + node + backend ingress together on the two CPUs;
//! the variants differ only in the node's work. On a machine shared with other work the wall
//! clock rate says as much about the neighbours as about the path, so each sender also reads
//! its own CPU time (`CLOCK_THREAD_CPUTIME_ID`, which includes the softirq work done in its
//! context): CPU ns per packet counted, the inverse of the rate at 100% of one CPU.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lb_agent::model::Protocol;
use lb_common::config::{
    CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig, EVENTS_PER_SEC, SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use lb_common::drop::Hook;
use lb_testkit::packet::{Frame, ip_be};
use lb_testkit::{Netns, Process, veth};

use crate::datapath::{LB_MAP_MAX, LbDatapath};
use crate::fixture::{BACKEND_NET, BACKEND_PORT, Fixture, SERVICE_PORT};
use crate::netns::{self, run_timed};
use crate::stats::{Summary, summarize};
use crate::traffic::{IPTABLES_RESTORE, Variant, raise_priority};

/// Frame sizes measured, in bytes from the Ethernet header to the end of the payload (a veth
/// carries no FCS): the minimum Ethernet frame, and a frame near the MTU.
pub const FRAME_SIZES: [usize; 2] = [64, 1400];
/// Distinct flows (source ports) the senders cycle through.
pub const FLOWS: u16 = 1024;
const FIRST_SOURCE_PORT: u16 = 20_000;
/// Frames per `sendmmsg`.
const BATCH: usize = 64;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const NODE_ADDR: &str = "10.0.3.1";
/// How long a sent packet may take to reach the backend's counter in the warm-up.
const ARRIVAL: Duration = Duration::from_secs(5);
/// How long iperf3 may run in all before it is killed: a stalled transfer fails the run.
const IPERF_TIMEOUT: &str = "60";

/// Sizes and lengths of B4.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Service counts for the UDP rate.
    pub sizes: &'static [u32],
    /// Interleaved rounds of the UDP rate.
    pub rounds: usize,
    /// How long the senders send, per variant, frame size and round.
    pub send_for: Duration,
    /// Interleaved rounds of iperf3.
    pub tcp_rounds: usize,
    /// iperf3's length arguments (`-t 5`).
    pub iperf_length: &'static [&'static str],
}

/// UDP forwarding through one variant's node at one size.
#[derive(Clone, Debug)]
pub struct UdpResult {
    /// Services loaded.
    pub services: u32,
    /// What is in the node.
    pub variant: Variant,
    /// Per frame size ([`FRAME_SIZES`]): packets per second counted at the backend.
    pub forwarded: [Summary; 2],
    /// Per frame size: packets per second the senders handed to the kernel.
    pub sent: [Summary; 2],
    /// Per frame size: the senders' CPU time per packet counted, in ns (their own work and
    /// the node's and backend's receive work done in their context).
    pub cpu_ns: [Summary; 2],
}

/// A TCP path measured with iperf3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpPath {
    /// One node, no rules, to the backend's address.
    Direct,
    /// One node, lb's `from_pod` DNAT to the backend.
    Dnat,
    /// Two nodes, no rules, to the backend's address.
    DirectTwoNodes,
    /// Two nodes, lb's `from_netdev` on the first: DNAT, SNAT to the node, FIB redirect.
    Snat,
}

impl TcpPath {
    /// Every path, in measurement order within a round.
    pub const ALL: [TcpPath; 4] = [
        TcpPath::Direct,
        TcpPath::Dnat,
        TcpPath::DirectTwoNodes,
        TcpPath::Snat,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            TcpPath::Direct => "direct",
            TcpPath::Dnat => "lb DNAT (from_pod)",
            TcpPath::DirectTwoNodes => "direct, two nodes",
            TcpPath::Snat => "lb SNAT (from_netdev, FIB redirect)",
        }
    }

    /// The path without lb that this one is compared with.
    pub fn baseline(self) -> TcpPath {
        match self {
            TcpPath::Direct | TcpPath::Dnat => TcpPath::Direct,
            TcpPath::DirectTwoNodes | TcpPath::Snat => TcpPath::DirectTwoNodes,
        }
    }

    fn two_nodes(self) -> bool {
        matches!(self, TcpPath::DirectTwoNodes | TcpPath::Snat)
    }
}

/// iperf3 through one path.
#[derive(Clone, Debug)]
pub struct TcpResult {
    /// The path.
    pub path: TcpPath,
    /// Receiver's Gbit/s.
    pub gbit: Summary,
    /// TCP retransmissions over every round.
    pub retransmits: u64,
}

/// Everything B4 measured.
#[derive(Clone, Debug, Default)]
pub struct Forwarding {
    /// Sender threads, one per CPU.
    pub senders: usize,
    /// UDP rates, by size then variant.
    pub udp: Vec<UdpResult>,
    /// iperf3 rates, by path.
    pub tcp: Vec<TcpResult>,
}

/// Runs B4: the UDP rate at every size, then iperf3.
pub fn run(plan: &Plan) -> anyhow::Result<Forwarding> {
    let mut out = Forwarding {
        senders: senders(),
        ..Forwarding::default()
    };
    for &services in plan.sizes {
        out.udp.extend(udp(plan, services)?);
    }
    out.tcp = tcp(plan)?;
    Ok(out)
}

fn udp(plan: &Plan, services: u32) -> anyhow::Result<Vec<UdpResult>> {
    let fixture = Fixture {
        services,
        backends: 1,
    };
    eprintln!("lb-bench: forwarding: building 4 UDP chains with {services} services");
    let mut chains = Vec::new();
    for (k, variant) in Variant::ALL.into_iter().enumerate() {
        chains.push(UdpChain::build(variant, fixture, &format!("fw{k}"))?);
    }
    // [chain][frame size] → one rate per round.
    let mut forwarded = vec![vec![Vec::new(); FRAME_SIZES.len()]; chains.len()];
    let mut sent = forwarded.clone();
    let mut cpu_ns = forwarded.clone();
    for round in 0..plan.rounds {
        // Rotate the order each round so no variant always runs first.
        for step in 0..chains.len() {
            let k = (step + round) % chains.len();
            for size in 0..FRAME_SIZES.len() {
                let rate = chains[k].rate(size, plan.send_for)?;
                forwarded[k][size].push(vec![rate.forwarded]);
                sent[k][size].push(vec![rate.sent]);
                cpu_ns[k][size].push(vec![rate.cpu_ns]);
            }
        }
    }
    let results: Vec<UdpResult> = chains
        .iter()
        .enumerate()
        .map(|(k, chain)| UdpResult {
            services,
            variant: chain.variant,
            forwarded: [summarize(&forwarded[k][0]), summarize(&forwarded[k][1])],
            sent: [summarize(&sent[k][0]), summarize(&sent[k][1])],
            cpu_ns: [summarize(&cpu_ns[k][0]), summarize(&cpu_ns[k][1])],
        })
        .collect();
    let line: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{} {:.0}/{:.0} kpps, {:.0}/{:.0} CPU ns per packet",
                r.variant.name(),
                r.forwarded[0].p50 / 1e3,
                r.forwarded[1].p50 / 1e3,
                r.cpu_ns[0].p50,
                r.cpu_ns[1].p50
            )
        })
        .collect();
    eprintln!(
        "lb-bench: forwarding {services} (64/1400 B): {}",
        line.join("; ")
    );
    Ok(results)
}

/// One rate measurement.
struct Rate {
    forwarded: f64,
    sent: f64,
    cpu_ns: f64,
}

/// Client → node → backend with one variant in the node, UDP frames ready to send.
struct UdpChain {
    variant: Variant,
    client: Netns,
    _node: Netns,
    backend: Netns,
    _lb: Option<LbDatapath>,
    client_ifindex: u32,
    /// Per frame size, one frame per flow.
    frames: Vec<Arc<Vec<Vec<u8>>>>,
}

impl UdpChain {
    fn build(variant: Variant, fixture: Fixture, tag: &str) -> anyhow::Result<Self> {
        let client = netns::create(&format!("{tag}-c"))?;
        let node = netns::create(&format!("{tag}-n"))?;
        let backend = netns::create(&format!("{tag}-b"))?;
        veth(&node, "c0", &client, "eth0")?;
        veth(&node, "b0", &backend, "eth0")?;
        client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        node.ip(&["addr", "add", "10.0.1.1/24", "dev", "c0"])?;
        node.ip(&["addr", "add", "10.0.2.1/24", "dev", "b0"])?;
        node.ip(&["route", "add", BACKEND_NET, "via", "10.0.2.2"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        backend.ip(&["addr", "add", "10.0.2.2/24", "dev", "eth0"])?;
        backend.ip(&["route", "add", "local", BACKEND_NET, "dev", "lo"])?;
        // The node knows the backend's MAC from the start, so no packet waits for ARP.
        let backend_mac = mac(&backend, "eth0")?;
        node.ip(&[
            "neigh",
            "replace",
            "10.0.2.2",
            "lladdr",
            &backend_mac,
            "dev",
            "b0",
            "nud",
            "permanent",
        ])?;
        let port = BACKEND_PORT.to_string();
        for command in [
            &["add", "table", "netdev", "lbbench"][..],
            &[
                "add",
                "chain",
                "netdev",
                "lbbench",
                "ingress",
                "{ type filter hook ingress device \"eth0\" priority 0 ; }",
            ],
            &[
                "add", "rule", "netdev", "lbbench", "ingress", "udp", "dport", &port, "counter",
                "drop",
            ],
        ] {
            backend
                .run("nft", command)
                .context("the backend's counting chain (nft netdev ingress)")?;
        }

        let mut lb = None;
        let target = match variant {
            Variant::Direct => {
                SocketAddrV4::new(fixture.backend(fixture.target(), 0), BACKEND_PORT)
            }
            Variant::Lb => {
                let mut datapath = LbDatapath::load(tag)?;
                datapath.sync(&fixture.desired_for(Protocol::Udp))?;
                node.within(|| {
                    datapath.attach_from_pod("c0")?;
                    datapath.attach_from_pod("b0")
                })??;
                lb = Some(datapath);
                SocketAddrV4::new(Fixture::vip(fixture.target()), SERVICE_PORT)
            }
            Variant::Iptables => {
                let path = write_temp(tag, "rules", &fixture.iptables_for(Protocol::Udp))?;
                run_timed(&node, IPTABLES_RESTORE, &[], Some(&path))?;
                let _ = std::fs::remove_file(path);
                SocketAddrV4::new(Fixture::vip(fixture.target()), SERVICE_PORT)
            }
            Variant::Nftables => {
                let path = write_temp(tag, "nft", &fixture.nftables_fast_for(Protocol::Udp))?;
                run_timed(&node, "nft", &["-f", &path.display().to_string()], None)?;
                let _ = std::fs::remove_file(path);
                SocketAddrV4::new(Fixture::vip(fixture.target()), SERVICE_PORT)
            }
        };
        let (client_mac, node_mac) = (mac(&client, "eth0")?, mac(&node, "c0")?);
        let frames = FRAME_SIZES
            .iter()
            .map(|&size| Arc::new(flow_frames(target, &client_mac, &node_mac, size)))
            .collect();
        let chain = Self {
            variant,
            client_ifindex: client.ifindex("eth0")?,
            client,
            _node: node,
            backend,
            _lb: lb,
            frames,
        };
        chain.warm_up(target)?;
        Ok(chain)
    }

    /// Sends every flow's first packet and waits until all arrived: proves the path works and
    /// leaves every flow established.
    fn warm_up(&self, target: SocketAddrV4) -> anyhow::Result<()> {
        let before = self.received()?;
        let frames = self.frames[0].clone();
        let ifindex = self.client_ifindex;
        let sent = self
            .client
            .within(move || send_once(ifindex, &frames))?
            .context("send the warm-up packets")?;
        let want = before + sent;
        lb_testkit::wait_until(
            &format!(
                "{}: the {sent} warm-up packets to {target} to reach the backend",
                self.variant.name()
            ),
            ARRIVAL,
            || match self.received() {
                Ok(now) if now >= want => Ok(Some(())),
                Ok(now) => Err(format!("{} arrived", now - before)),
                Err(err) => Err(format!("{err:#}")),
            },
        )?;
        Ok(())
    }

    /// UDP packets to port 8080 the backend's ingress has counted.
    fn received(&self) -> anyhow::Result<u64> {
        let text = self
            .backend
            .run("nft", &["list", "chain", "netdev", "lbbench", "ingress"])?;
        counter_packets(&text).with_context(|| format!("no counter in {text:?}"))
    }

    /// Sends frames of `FRAME_SIZES[size]` from every CPU for `duration`; returns the rates.
    fn rate(&self, size: usize, duration: Duration) -> anyhow::Result<Rate> {
        let before = self.received()?;
        let cpus = senders();
        let started = Instant::now();
        let until = started + duration;
        let mut senders = Vec::new();
        for cpu in 0..cpus {
            let frames = self.frames[size].clone();
            let ifindex = self.client_ifindex;
            senders.push(self.client.spawn_thread(move || {
                pin_to(cpu);
                raise_priority();
                blast(ifindex, &frames, cpu * frames.len() / cpus, until)
            })?);
        }
        let (mut sent, mut cpu) = (0, Duration::ZERO);
        for sender in senders {
            let (count, used) = sender
                .join()
                .map_err(|_| anyhow::anyhow!("a UDP sender panicked"))?
                .context("send UDP frames (AF_PACKET)")?;
            sent += count;
            cpu += used;
        }
        let elapsed = started.elapsed().as_secs_f64();
        // Packets still queued when the senders stopped arrive within a poll or two.
        let mut last = self.received()?;
        let received = lb_testkit::wait_until("the backend's counter to settle", ARRIVAL, || {
            let now = self.received().map_err(|err| format!("{err:#}"))?;
            let settled = now == last;
            last = now;
            Ok(settled.then_some(now))
        })?;
        let counted = received - before;
        Ok(Rate {
            forwarded: counted as f64 / elapsed,
            sent: sent as f64 / elapsed,
            cpu_ns: cpu.as_secs_f64() * 1e9 / counted.max(1) as f64,
        })
    }
}

/// One sender thread per CPU.
fn senders() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// One frame per flow: UDP from `CLIENT:port` to `target`, `size` bytes in all.
fn flow_frames(target: SocketAddrV4, src_mac: &str, dst_mac: &str, size: usize) -> Vec<Vec<u8>> {
    const HEADERS: usize = 14 + 20 + 8;
    let (src_mac, dst_mac) = (parse_mac(src_mac), parse_mac(dst_mac));
    (0..FLOWS)
        .map(|k| {
            let src = format!("{CLIENT}:{}", FIRST_SOURCE_PORT + k);
            let frame = Frame::udp(&src, &target.to_string())
                .with_macs(src_mac, dst_mac)
                .sized(size - HEADERS)
                .bytes();
            debug_assert_eq!(frame.len(), size);
            frame
        })
        .collect()
}

/// The MAC address of `dev` in `ns`, as `ip` prints it.
fn mac(ns: &Netns, dev: &str) -> anyhow::Result<String> {
    let json = ns.ip(&["-j", "link", "show", "dev", dev])?;
    let links: serde_json::Value = serde_json::from_str(&json)?;
    links[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no MAC address of {dev} in {}: {json}", ns.name()))
}

fn parse_mac(text: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (byte, part) in out.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    out
}

/// The packet count of the first `counter packets N bytes M` in `nft list` output.
fn counter_packets(text: &str) -> Option<u64> {
    let rest = &text[text.find("counter packets ")? + "counter packets ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn write_temp(tag: &str, ext: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path =
        std::env::temp_dir().join(format!("lb-bench-{}-{tag}-udp.{ext}", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; we set one bit and apply it to this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// An `AF_PACKET` socket that sends on `ifindex` of the calling thread's namespace and
/// receives nothing (protocol 0), bypassing the qdisc.
fn packet_socket(ifindex: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: socket(2) returns a new descriptor or -1; OwnedFd takes sole ownership of it.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: 0,
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: bind and setsockopt read the structs on the stack for the duration of the call.
    unsafe {
        if libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        );
    }
    Ok(fd)
}

/// Sends every frame once; returns how many the kernel took.
fn send_once(ifindex: u32, frames: &[Vec<u8>]) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let fd = packet_socket(ifindex)?;
    let mut sent = 0;
    for frame in frames {
        // SAFETY: send(2) reads `frame` for the duration of the call.
        let rc = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        sent += 1;
    }
    Ok(sent)
}

/// CPU time the calling thread has used. The kernel counts the softirq work it runs on the
/// thread's behalf (when a send re-enables softirqs) as the thread's: this kernel has no
/// `CONFIG_IRQ_TIME_ACCOUNTING`, which would subtract it.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec on the stack.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Sends `frames` round and round, [`BATCH`] per `sendmmsg`, starting at `first`, until
/// `until`; returns how many the kernel took and the CPU time the thread used meanwhile. A
/// full buffer (`ENOBUFS`) is retried.
fn blast(
    ifindex: u32,
    frames: &[Vec<u8>],
    first: usize,
    until: Instant,
) -> std::io::Result<(u64, Duration)> {
    use std::os::fd::AsRawFd as _;
    let fd = packet_socket(ifindex)?;
    let mut iovecs: Vec<libc::iovec> = frames
        .iter()
        .map(|frame| libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr (no name, no control data) is valid.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = iov;
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    let count = messages.len();
    let mut at = first % count;
    let mut sent = 0;
    let cpu_before = thread_cpu();
    while Instant::now() < until {
        let batch = BATCH.min(count - at);
        // SAFETY: `messages[at..at + batch]` are valid mmsghdrs whose iovecs point into
        // `frames`, all of which outlive the call; the kernel only reads them (and msg_len).
        let rc = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                messages.as_mut_ptr().add(at),
                batch as u32,
                0,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => continue,
                _ => return Err(err),
            }
        }
        sent += rc as u64;
        at = (at + rc as usize) % count;
    }
    Ok((sent, thread_cpu().saturating_sub(cpu_before)))
}

fn tcp(plan: &Plan) -> anyhow::Result<Vec<TcpResult>> {
    eprintln!("lb-bench: forwarding: building 4 TCP paths for iperf3");
    let mut chains = Vec::new();
    for (k, path) in TcpPath::ALL.into_iter().enumerate() {
        chains.push(TcpChain::build(path, &format!("fwt{k}"))?);
    }
    let mut gbit: Vec<Vec<Vec<f64>>> = vec![Vec::new(); chains.len()];
    let mut retransmits = vec![0u64; chains.len()];
    for round in 0..plan.tcp_rounds {
        for step in 0..chains.len() {
            let k = (step + round) % chains.len();
            let (rate, retransmitted) = chains[k].iperf3(plan.iperf_length)?;
            gbit[k].push(vec![rate / 1e9]);
            retransmits[k] += retransmitted;
        }
    }
    let results: Vec<TcpResult> = chains
        .iter()
        .enumerate()
        .map(|(k, chain)| TcpResult {
            path: chain.path,
            gbit: summarize(&gbit[k]),
            retransmits: retransmits[k],
        })
        .collect();
    let line: Vec<String> = results
        .iter()
        .map(|r| format!("{} {:.1} Gbit/s", r.path.name(), r.gbit.p50))
        .collect();
    eprintln!("lb-bench: forwarding, iperf3: {}", line.join("; "));
    Ok(results)
}

/// One path for iperf3, its server running in the backend. Fields drop in order: the server
/// stops (and is reaped) before its namespace goes.
struct TcpChain {
    path: TcpPath,
    _server: Process,
    client: Netns,
    _node: Netns,
    _node2: Option<Netns>,
    _backend: Netns,
    _lb: Option<LbDatapath>,
    target: SocketAddrV4,
}

impl TcpChain {
    fn build(path: TcpPath, tag: &str) -> anyhow::Result<Self> {
        let fixture = Fixture {
            services: 1,
            backends: 1,
        };
        let backend_addr = fixture.backend(0, 0);
        let client = netns::create(&format!("{tag}-c"))?;
        let node = netns::create(&format!("{tag}-n"))?;
        let backend = netns::create(&format!("{tag}-b"))?;
        lb_testkit::pod::prepare_node(&node)?;
        veth(&node, "c0", &client, "eth0")?;
        client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        client.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        node.ip(&["addr", "add", "10.0.1.1/24", "dev", "c0"])?;
        // The node (node2 on two-node paths) that the backend hangs off.
        let node2 = if path.two_nodes() {
            let node2 = netns::create(&format!("{tag}-m"))?;
            lb_testkit::pod::prepare_node(&node2)?;
            veth(&node, "n0", &node2, "eth0")?;
            node.ip(&["addr", "add", &format!("{NODE_ADDR}/24"), "dev", "n0"])?;
            node.ip(&["route", "add", BACKEND_NET, "via", "10.0.3.2"])?;
            node2.ip(&["addr", "add", "10.0.3.2/24", "dev", "eth0"])?;
            node2.ip(&["route", "add", "10.0.1.0/24", "via", NODE_ADDR])?;
            Some(node2)
        } else {
            None
        };
        let last = node2.as_ref().unwrap_or(&node);
        veth(last, "b0", &backend, "eth0")?;
        last.ip(&["addr", "add", "10.0.2.1/24", "dev", "b0"])?;
        if !path.two_nodes() {
            node.ip(&["route", "add", BACKEND_NET, "via", "10.0.2.2"])?;
        } else {
            last.ip(&["route", "add", BACKEND_NET, "via", "10.0.2.2"])?;
        }
        backend.ip(&["addr", "add", "10.0.2.2/24", "dev", "eth0"])?;
        backend.ip(&["route", "add", "default", "via", "10.0.2.1"])?;
        backend.ip(&["route", "add", "local", BACKEND_NET, "dev", "lo"])?;

        let vip = SocketAddrV4::new(Fixture::vip(0), SERVICE_PORT);
        let (lb, target) = match path {
            TcpPath::Direct | TcpPath::DirectTwoNodes => {
                (None, SocketAddrV4::new(backend_addr, BACKEND_PORT))
            }
            TcpPath::Dnat => {
                let mut datapath = LbDatapath::load(tag)?;
                datapath.sync(&fixture.desired())?;
                node.within(|| {
                    datapath.attach_from_pod("c0")?;
                    datapath.attach_from_pod("b0")
                })??;
                (Some(datapath), vip)
            }
            TcpPath::Snat => {
                let node_addr: Ipv4Addr = NODE_ADDR.parse()?;
                let mut datapath = LbDatapath::load_with(
                    tag,
                    DatapathConfig {
                        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
                        node_addr: ip_be(node_addr),
                        snat_port_min: SNAT_PORT_MIN,
                        snat_port_max: SNAT_PORT_MAX,
                        events_per_sec: EVENTS_PER_SEC,
                        ..DatapathConfig::default()
                    },
                    LB_MAP_MAX,
                )?;
                let mut desired = fixture.desired();
                for service in &mut desired {
                    for backend in &mut service.backends {
                        backend.remote = true;
                    }
                }
                datapath.sync(&desired)?;
                node.within(|| {
                    datapath.attach(Hook::FromNetdev, "c0")?;
                    datapath.attach(Hook::FromNetdev, "n0")
                })??;
                (Some(datapath), vip)
            }
        };
        let log =
            std::env::temp_dir().join(format!("lb-bench-{}-{tag}-iperf3.log", std::process::id()));
        let port = BACKEND_PORT.to_string();
        let mut server = backend.spawn("iperf3", &["-s", "-p", &port], &log)?;
        let listening = format!(":{port} ");
        server.wait_until("iperf3 -s to listen", ARRIVAL, || {
            let out = backend
                .run("ss", &["-Hltn"])
                .map_err(|err| err.to_string())?;
            Ok(out.contains(&listening).then_some(()))
        })?;
        Ok(Self {
            path,
            _server: server,
            client,
            _node: node,
            _node2: node2,
            _backend: backend,
            _lb: lb,
            target,
        })
    }

    /// One iperf3 run: the receiver's bit/s and the sender's retransmissions.
    fn iperf3(&self, length: &[&str]) -> anyhow::Result<(f64, u64)> {
        let (ip, port) = (self.target.ip().to_string(), self.target.port().to_string());
        let mut args = vec![IPERF_TIMEOUT, "iperf3", "-c", &ip, "-p", &port, "-J"];
        args.extend_from_slice(length);
        let outcome = self.client.exec("timeout", &args)?;
        let report: Option<serde_json::Value> = serde_json::from_str(&outcome.stdout).ok();
        let end = report
            .as_ref()
            .filter(|report| report.get("error").is_none())
            .map(|report| &report["end"]);
        let Some(rate) = end.and_then(|end| end["sum_received"]["bits_per_second"].as_f64()) else {
            bail!(
                "{}: iperf3 to {} failed: {} {}{}",
                self.path.name(),
                self.target,
                outcome.status,
                outcome.stdout.trim(),
                outcome.stderr.trim()
            );
        };
        let retransmits = end
            .and_then(|end| end["sum_sent"]["retransmits"].as_u64())
            .unwrap_or(0);
        Ok((rate, retransmits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_frames_have_the_measured_size_and_distinct_source_ports() {
        let target = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 80);
        for size in FRAME_SIZES {
            let frames = flow_frames(target, "02:00:00:00:00:01", "02:00:00:00:00:02", size);
            assert_eq!(frames.len(), usize::from(FLOWS));
            assert!(frames.iter().all(|frame| frame.len() == size));
            let ports: std::collections::BTreeSet<[u8; 2]> =
                frames.iter().map(|frame| [frame[34], frame[35]]).collect();
            assert_eq!(ports.len(), usize::from(FLOWS));
            assert_eq!(
                &frames[0][0..6],
                &[2, 0, 0, 0, 0, 2],
                "destination MAC first"
            );
        }
    }

    #[test]
    fn the_counter_is_read_from_nft_list_output() {
        let text = "table netdev lbbench {\n\tchain ingress {\n\t\ttype filter hook ingress \
                    device \"eth0\" priority filter; policy accept;\n\t\tudp dport 8080 counter \
                    packets 1234 bytes 79000 drop\n\t}\n}\n";
        assert_eq!(counter_packets(text), Some(1234));
        assert_eq!(counter_packets("table netdev lbbench {}"), None);
    }
}
