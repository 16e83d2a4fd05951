//! The servers a backend pod runs, as processes inside its namespace: the lab's HTTP server
//! (answers name the pod and the client it saw) and an echo server on TCP and UDP (every answer
//! starts with the pod's address and the client's). Each start waits until the server listens.
//!
//! Scripts are written into a directory the caller owns (a test's temporary directory, the
//! lab's run directory), so that concurrent users never share one.
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::Result;
use crate::netns::{Netns, Process};
use crate::topology::{HTTP_SERVER, write_file};

/// How long a server gets to start listening (python3 starts in well under a second; the
/// margin is for a machine busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The echo server: TCP and UDP on one address and port. A UDP datagram is answered with one
/// datagram, a TCP line with one line, both `POD_IP CLIENT_IP:CLIENT_PORT PAYLOAD`.
const ECHO_SERVER: &str = r#"
import socket, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])

def answer(peer, payload):
    return f"{ip} {peer[0]}:{peer[1]} ".encode() + payload

def udp(sock):
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(answer(peer, data), peer)

def session(conn, peer):
    with conn:
        for line in conn.makefile("rb"):
            conn.sendall(answer(peer, line))

udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp_sock.bind((ip, port))
tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp_sock.bind((ip, port))
tcp_sock.listen(64)
threading.Thread(target=udp, args=(udp_sock,), daemon=True).start()
print(f"echo listening on {ip}:{port} tcp and udp", flush=True)
while True:
    conn, peer = tcp_sock.accept()
    threading.Thread(target=session, args=(conn, peer), daemon=True).start()
"#;

/// Starts the lab's HTTP server on `ip:port` in `ns` (script and log in `dir`) and waits until
/// it listens. Its answers carry `X-Pod-IP` and `X-Client-IP` (see [`crate::probe::HttpReply`]).
pub fn http(ns: &Netns, ip: Ipv4Addr, port: u16, dir: &Path) -> Result<Process> {
    let script = dir.join("http-server.py");
    write_file(&script, HTTP_SERVER)?;
    let log = dir.join(format!("{}-http-{ip}-{port}.log", ns.name()));
    let args = [
        &*script.to_string_lossy(),
        &ip.to_string(),
        &port.to_string(),
    ];
    let mut process = ns.spawn("python3", &args, &log)?;
    await_listening(ns, &mut process, &[("-Hltn", ip, port)])?;
    Ok(process)
}

/// Starts the echo server on `ip:port` (TCP and UDP) in `ns` (script and log in `dir`) and
/// waits until both sockets are bound. [`crate::probe::udp_echo`] and
/// [`crate::probe::EchoSession`] are its clients.
pub fn echo(ns: &Netns, ip: Ipv4Addr, port: u16, dir: &Path) -> Result<Process> {
    let script = dir.join("echo-server.py");
    write_file(&script, ECHO_SERVER)?;
    let log = dir.join(format!("{}-echo-{ip}-{port}.log", ns.name()));
    let args = [
        &*script.to_string_lossy(),
        &ip.to_string(),
        &port.to_string(),
    ];
    let mut process = ns.spawn("python3", &args, &log)?;
    await_listening(
        ns,
        &mut process,
        &[("-Hltn", ip, port), ("-Hlun", ip, port)],
    )?;
    Ok(process)
}

/// Waits until `ss FLAGS` in `ns` lists `ip:port` for every (flags, ip, port).
fn await_listening(
    ns: &Netns,
    process: &mut Process,
    sockets: &[(&str, Ipv4Addr, u16)],
) -> Result<()> {
    let what = format!("{} in {} to listen", process.log().display(), ns.name());
    process.wait_until(&what, START_TIMEOUT, || {
        for (flags, ip, port) in sockets {
            let out = ns.run("ss", &[flags]).map_err(|err| err.to_string())?;
            if !out.contains(&format!("{ip}:{port} ")) {
                return Err(format!("ss {flags}:\n{out}"));
            }
        }
        Ok(Some(()))
    })
}
