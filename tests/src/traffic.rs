//! A client pod's steady HTTP traffic to one address, for tests that change something under
//! it (a restart, an upgrade) and must show that no connection failed: [`Client`] opens new
//! connections at a steady rate and keeps a few long-lived ones exchanging requests, each
//! answer naming the pod that sent it (`lb_testkit::servers::http`'s `X-Pod-IP`).
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lb_testkit::{Netns, ok, wait_until};

/// Pause between two new connections: 20 a second.
const NEW_CONNECTION_EVERY: Duration = Duration::from_millis(50);
/// Pause between two exchanges on each kept connection.
const KEPT_EXCHANGE_EVERY: Duration = Duration::from_millis(200);
/// A new connection fails if its handshake takes longer: shorter than the SYN retransmission
/// timeout (1 s), so a SYN the datapath lost is a failure rather than a slow success.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(900);
/// A request on any connection fails if its answer takes longer: a connection the datapath
/// broke fails at once (a reset) or never answers; a slow answer is the machine, not lb.
const IO_TIMEOUT: Duration = lb_testkit::patience::ANSWER_WITHIN;

/// One HTTP/1.1 GET on `conn`: the pod that answered.
pub fn exchange(conn: &mut BufReader<TcpStream>, close: bool) -> std::io::Result<Ipv4Addr> {
    let connection = if close { "close" } else { "keep-alive" };
    conn.get_mut().write_all(
        format!("GET / HTTP/1.1\r\nHost: lb\r\nConnection: {connection}\r\n\r\n").as_bytes(),
    )?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut status = String::new();
    conn.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(bad(format!("status line {status:?}")));
    }
    let (mut length, mut pod) = (None, None);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers".into()));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "x-pod-ip" => pod = value.trim().parse::<Ipv4Addr>().ok(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length.ok_or_else(|| bad("no Content-Length".into()))?];
    conn.read_exact(&mut body)?;
    pod.ok_or_else(|| bad("no X-Pod-IP".into()))
}

/// A connection to `to` with the client's timeouts.
pub fn connect(to: SocketAddrV4) -> std::io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&SocketAddr::V4(to), CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(BufReader::new(stream))
}

/// A new connection to `to`, one request, closed: the pod that answered.
pub fn get_once(to: SocketAddrV4) -> std::io::Result<Ipv4Addr> {
    exchange(&mut connect(to)?, true)
}

/// What the client saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// New connections that completed their exchange.
    pub new_ok: u64,
    /// New connections that failed, with when and why.
    pub new_failed: Vec<String>,
    /// New connections per answering pod.
    pub by_pod: BTreeMap<Ipv4Addr, u64>,
    /// Exchanges completed on kept connections.
    pub kept_ok: u64,
    /// Kept connections that broke or changed pod, with when and why.
    pub kept_broken: Vec<String>,
}

impl Seen {
    /// Whether every connection so far succeeded.
    pub fn no_failures(&self) -> bool {
        self.new_failed.is_empty() && self.kept_broken.is_empty()
    }
}

/// New connections at a steady rate and `kept` long-lived ones, all to one address, from
/// threads inside the client's namespace; stopped on drop.
pub struct Client {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Client {
    /// Starts the traffic from `ns` to `to`; the kept connections are opened before this
    /// returns.
    pub fn start(ns: &Netns, to: SocketAddrV4, kept: usize) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (s, st) = (seen.clone(), stop.clone());
        let new_connections = ns.spawn_thread(move || {
            while !st.load(Ordering::Relaxed) {
                let at = started.elapsed();
                let result = get_once(to);
                let mut seen = s.lock().expect("seen");
                match result {
                    Ok(pod) => {
                        seen.new_ok += 1;
                        *seen.by_pod.entry(pod).or_default() += 1;
                    }
                    Err(err) => seen.new_failed.push(format!("at {at:?}: {err}")),
                }
                drop(seen);
                // Pacing of a steady rate, not a wait for a condition.
                std::thread::sleep(NEW_CONNECTION_EVERY);
            }
        });
        let opened: Vec<(BufReader<TcpStream>, Ipv4Addr)> = ok(
            ns.within(|| {
                (0..kept)
                    .map(|_| {
                        let mut conn = connect(to).expect("open a kept connection");
                        let pod = exchange(&mut conn, false).expect("first exchange");
                        (conn, pod)
                    })
                    .collect()
            }),
            "open the kept connections",
        );
        let (s, st) = (seen.clone(), stop.clone());
        // The sockets belong to the client's namespace wherever this thread runs.
        let kept_connections = std::thread::spawn(move || {
            let mut kept = opened;
            while !st.load(Ordering::Relaxed) && !kept.is_empty() {
                let at = started.elapsed();
                kept.retain_mut(|(conn, pod)| {
                    let result = exchange(conn, false);
                    let mut seen = s.lock().expect("seen");
                    match result {
                        Ok(answered) if answered == *pod => {
                            seen.kept_ok += 1;
                            true
                        }
                        Ok(answered) => {
                            seen.kept_broken.push(format!(
                                "at {at:?}: connection to {pod} answered by {answered}"
                            ));
                            false
                        }
                        Err(err) => {
                            seen.kept_broken
                                .push(format!("at {at:?}: connection to {pod}: {err}"));
                            false
                        }
                    }
                });
                std::thread::sleep(KEPT_EXCHANGE_EVERY);
            }
        });
        Self {
            seen,
            stop,
            threads: vec![
                ok(new_connections, "start the new-connection thread"),
                kept_connections,
            ],
            started,
        }
    }

    /// What the client saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("seen").clone()
    }

    /// Waits until at least `new` more new connections and `kept` more exchanges on kept
    /// connections succeeded.
    pub fn wait_progress(&self, what: &str, new: u64, kept: u64, timeout: Duration) {
        let before = self.seen();
        ok(
            wait_until(what, timeout, || {
                let now = self.seen();
                if now.new_ok >= before.new_ok + new && now.kept_ok >= before.kept_ok + kept {
                    Ok(Some(()))
                } else {
                    Err(format!(
                        "{} new, {} kept since; {:?} failed, {:?} broken",
                        now.new_ok - before.new_ok,
                        now.kept_ok - before.kept_ok,
                        now.new_failed,
                        now.kept_broken
                    ))
                }
            }),
            what,
        );
    }

    /// Fails at once, with what broke, if any connection failed so far.
    pub fn assert_no_failures(&self, context: &str) {
        let seen = self.seen();
        assert!(
            seen.no_failures(),
            "{context}: {} new connections failed {:?}; kept connections broken {:?} \
             (client started {:?} ago)",
            seen.new_failed.len(),
            seen.new_failed,
            seen.kept_broken,
            self.started.elapsed()
        );
    }

    /// Stops the traffic and returns what it saw.
    pub fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("client thread");
        }
        self.seen()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
