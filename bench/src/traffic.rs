//! B2/B3: connect latency and new connections per second through a ClusterIP, lb against
//! kube-proxy's iptables and nftables rule sets, on one topology per variant:
//!
//! ```text
//! client ns  eth0 10.0.1.2-17/24 ── c0 10.0.1.1 │ node ns │ b0 10.0.2.1 ── eth0 10.0.2.2/24  backend ns
//!                                      (lb: from_pod on c0 and b0; or the nat rules)      local 10.128.0.0/9
//! ```
//!
//! The backend namespace answers for every backend address (a `local` route for the whole
//! backend /9) on port 8080, where a thread accepts and closes. The load generator is a
//! thread in the client namespace, pinned to CPU 0 at nice −10 (as is the server): blocking `connect()` timed from call to
//! return (SYN out, SYN/ACK in, ACK out), then `close()` with `SO_LINGER 0` (an RST, so no
//! TIME_WAIT). Every connection binds a source address and port never used before in that
//! namespace, so every SYN is a new flow for lb's conntrack and the kernel's alike.
//! `direct` connects to the backend address through a node with no rules: the baseline that
//! "added latency" subtracts.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::datapath::LbDatapath;
use crate::fixture::{BACKEND_NET, BACKEND_PORT, Fixture, SERVICE_PORT};
use crate::netns::{self, run_timed};
use lb_testkit::{Netns, veth};

/// What sits in the node namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Nothing: connect straight to the backend.
    Direct,
    /// lb's `from_pod` on both node-side veths.
    Lb,
    /// kube-proxy's iptables rules (iptables-legacy-restore).
    Iptables,
    /// kube-proxy's nftables rules (nft -f).
    Nftables,
}

impl Variant {
    /// Every variant, in measurement order within a round.
    pub const ALL: [Variant; 4] = [
        Variant::Direct,
        Variant::Lb,
        Variant::Iptables,
        Variant::Nftables,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Lb => "lb",
            Variant::Iptables => "iptables",
            Variant::Nftables => "nftables",
        }
    }
}

/// The iptables binary kube-proxy's rules are loaded with.
pub const IPTABLES_RESTORE: &str = "iptables-legacy-restore";
/// Client addresses: 10.0.1.2 .. 10.0.1.(1 + CLIENT_ADDRS).
const CLIENT_ADDRS: u32 = 16;
const FIRST_PORT: u32 = 1024;
/// A connect this slow had its SYN retransmitted (the first retransmission is after 1 s).
pub const RETRANSMITTED: Duration = Duration::from_millis(900);
const PORTS: u32 = 64_000;

/// One client → node → backend chain with one variant in the node.
pub struct Chain {
    /// The variant.
    pub variant: Variant,
    client: Netns,
    _node: Netns,
    _backend: Netns,
    _lb: Option<LbDatapath>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    target: SocketAddrV4,
    next_tuple: u32,
}

impl Chain {
    /// Builds the chain for `fixture` with `variant` in the node; connections go to the
    /// last-inserted service (or its backend, for `direct`). `tag` keeps names unique.
    pub fn build(variant: Variant, fixture: Fixture, tag: &str) -> anyhow::Result<Self> {
        let client = netns::create(&format!("{tag}-c"))?;
        let node = netns::create(&format!("{tag}-n"))?;
        let backend = netns::create(&format!("{tag}-b"))?;
        veth(&node, "c0", &client, "eth0")?;
        veth(&node, "b0", &backend, "eth0")?;
        client.ip(&["addr", "add", "10.0.1.2/24", "dev", "eth0"])?;
        for k in 1..CLIENT_ADDRS {
            client.ip(&[
                "addr",
                "add",
                &format!("10.0.1.{}/24", 2 + k),
                "dev",
                "eth0",
            ])?;
        }
        client.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        node.ip(&["addr", "add", "10.0.1.1/24", "dev", "c0"])?;
        node.ip(&["addr", "add", "10.0.2.1/24", "dev", "b0"])?;
        node.ip(&["route", "add", BACKEND_NET, "via", "10.0.2.2"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        backend.ip(&["addr", "add", "10.0.2.2/24", "dev", "eth0"])?;
        backend.ip(&["route", "add", "default", "via", "10.0.2.1"])?;
        backend.ip(&["route", "add", "local", BACKEND_NET, "dev", "lo"])?;

        let vip = Fixture::vip(fixture.target());
        let backend_addr = fixture.backend(fixture.target(), 0);
        let mut lb = None;
        let target = match variant {
            Variant::Direct => SocketAddrV4::new(backend_addr, BACKEND_PORT),
            Variant::Lb => {
                let mut datapath = LbDatapath::load(tag)?;
                datapath.sync(&fixture.desired())?;
                node.within(|| {
                    datapath.attach_from_pod("c0")?;
                    datapath.attach_from_pod("b0")
                })??;
                lb = Some(datapath);
                SocketAddrV4::new(vip, SERVICE_PORT)
            }
            Variant::Iptables => {
                let path = write_temp(tag, "rules", &fixture.iptables())?;
                run_timed(&node, IPTABLES_RESTORE, &[], Some(&path))?;
                let _ = std::fs::remove_file(path);
                SocketAddrV4::new(vip, SERVICE_PORT)
            }
            Variant::Nftables => {
                let path = write_temp(tag, "nft", &fixture.nftables_fast())?;
                run_timed(&node, "nft", &["-f", &path.display().to_string()], None)?;
                let _ = std::fs::remove_file(path);
                SocketAddrV4::new(vip, SERVICE_PORT)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let server = spawn_server(&backend, stop.clone())?;
        let mut chain = Self {
            variant,
            client,
            _node: node,
            _backend: backend,
            _lb: lb,
            stop,
            server: Some(server),
            target,
            next_tuple: 0,
        };
        // Warm up (neighbour entries, caches) and prove the path works.
        let warm = chain.latencies(20)?;
        if warm.len() < 20 {
            bail!(
                "{}: only {} of 20 warm-up connections to {} succeeded",
                variant.name(),
                warm.len(),
                chain.target
            );
        }
        Ok(chain)
    }

    fn next_source(&mut self) -> anyhow::Result<SocketAddrV4> {
        let k = self.next_tuple;
        self.next_tuple += 1;
        if k >= CLIENT_ADDRS * PORTS {
            bail!("ran out of fresh source tuples");
        }
        Ok(SocketAddrV4::new(
            Ipv4Addr::new(10, 0, 1, 2 + (k / PORTS) as u8),
            (FIRST_PORT + k % PORTS) as u16,
        ))
    }

    /// `count` connect latencies in µs (failed connects are left out).
    pub fn latencies(&mut self, count: usize) -> anyhow::Result<Vec<f64>> {
        let sources: Vec<SocketAddrV4> = (0..count)
            .map(|_| self.next_source())
            .collect::<anyhow::Result<_>>()?;
        let target = self.target;
        let client = &self.client;
        in_client(client, move || {
            let mut out = Vec::with_capacity(sources.len());
            for src in sources {
                if let Ok(elapsed) = connect_once(src, target) {
                    out.push(elapsed.as_secs_f64() * 1e6);
                }
            }
            out
        })
    }

    /// New connections completed per second over `duration` (one connection at a time), and
    /// how many of them took a second or more (a SYN retransmitted: the first was lost).
    pub fn rate(&mut self, duration: Duration) -> anyhow::Result<(f64, usize)> {
        // More tuples than the fastest variant can use in `duration`.
        let budget = (duration.as_secs_f64() * 60_000.0) as usize + 100;
        let sources: Vec<SocketAddrV4> = (0..budget)
            .map(|_| self.next_source())
            .collect::<anyhow::Result<_>>()?;
        let target = self.target;
        let (done, slow, elapsed) = in_client(&self.client, move || {
            let started = Instant::now();
            let mut done = 0u64;
            let mut slow = 0;
            for src in sources {
                if started.elapsed() >= duration {
                    break;
                }
                if let Ok(took) = connect_once(src, target) {
                    done += 1;
                    if took >= RETRANSMITTED {
                        slow += 1;
                    }
                }
            }
            (done, slow, started.elapsed())
        })?;
        Ok((done as f64 / elapsed.as_secs_f64(), slow))
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn write_temp(tag: &str, ext: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("lb-bench-{}-{tag}.{ext}", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Runs `f` on a thread inside the client namespace, pinned to CPU 0.
fn in_client<R: Send + 'static>(
    client: &Netns,
    f: impl FnOnce() -> R + Send + 'static,
) -> anyhow::Result<R> {
    let handle = client
        .spawn_thread(move || {
            pin_to_cpu0();
            raise_priority();
            f()
        })
        .context("enter the client namespace")?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))
}

/// Nice −10 for the calling thread: the CPUs are shared with builds, and a generator
/// descheduled mid-connect measures the scheduler, not the path.
pub fn raise_priority() {
    // SAFETY: gettid and setpriority have no memory effects; failure leaves the nice value.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
    }
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; we set one bit and apply it to this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// One connection from `src` to `dst`: the time `connect()` took, then an RST close.
fn connect_once(src: SocketAddrV4, dst: SocketAddrV4) -> std::io::Result<Duration> {
    // SAFETY: plain socket syscalls on a descriptor we own and close on every path; the
    // sockaddr and option structs live on the stack for the duration of each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let result = (|| {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as u32,
            );
            let timeout = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            );
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            );
            let local = sockaddr(src);
            if libc::bind(
                fd,
                (&raw const local).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let remote = sockaddr(dst);
            let started = Instant::now();
            let rc = libc::connect(
                fd,
                (&raw const remote).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            let elapsed = started.elapsed();
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(elapsed)
        })();
        libc::close(fd);
        result
    }
}

/// A thread in `backend` that accepts on 0.0.0.0:8080 and closes, until `stop`.
fn spawn_server(backend: &Netns, stop: Arc<AtomicBool>) -> anyhow::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = backend
        .spawn_thread(move || {
            raise_priority();
            let listener = std::net::TcpListener::bind(("0.0.0.0", BACKEND_PORT))
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener));
            let listener = match listener {
                Ok(listener) => {
                    let _ = ready_tx.send(Ok(()));
                    listener
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            use std::os::fd::AsRawFd as _;
            let fd = listener.as_raw_fd();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        let mut pfd = libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd on the stack.
                        unsafe { libc::poll(&mut pfd, 1, 50) };
                    }
                    Err(_) => {}
                }
            }
        })
        .context("enter the backend namespace")?;
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(err)) => Err(anyhow::Error::new(err).context("start the backend server")),
        Err(_) => bail!("the backend server did not start"),
    }
}
