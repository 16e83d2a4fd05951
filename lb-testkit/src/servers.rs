//! The servers a backend pod runs, as processes inside its namespace: the HTTP server
//! (answers name the pod and the client it saw) and an echo server on TCP and UDP (every answer
//! starts with the pod's address and the client's). Each start waits until the server listens.
//! The lab's nginx pods, the namespace tests' backends and the restart tests' backends all run
//! these two.
//!
//! Scripts are written into a directory the caller owns (a test's temporary directory, the
//! lab's run directory), so that concurrent users never share one.
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::netns::{Netns, Process};
use crate::{Result, write_file};

const HTTP_SERVER: &str = r#"
import http.server, socket, socketserver, sys
ip, port = sys.argv[1], int(sys.argv[2])

def host(addr):
    return f"[{addr}]" if ":" in addr else addr

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lb-lab-nginx"

    def version_string(self):
        return self.server_version

    def answer(self, with_body):
        client, client_port = self.client_address[0], self.client_address[1]
        keep = self.headers.get("Connection", "").lower() == "keep-alive"
        body = f"pod {ip} answered client {host(client)}:{client_port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pod-IP", ip)
        self.send_header("X-Client-IP", client)
        if not keep:
            self.send_header("Connection", "close")
        self.end_headers()
        if with_body:
            self.wfile.write(body)
        print(f"{self.command} {self.path} client={host(client)}:{client_port}", flush=True)

    def do_GET(self):
        self.answer(True)

    def do_HEAD(self):
        self.answer(False)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    allow_reuse_address = True
    daemon_threads = True
    # socketserver's default backlog is 5: a server starved of CPU for a moment (a loaded CI
    # machine) would drop SYNs past it, and a test would blame the datapath for the retransmit.
    request_queue_size = 128

    # HTTPServer's own server_bind asks DNS for the address's name (socket.getfqdn), which in
    # a namespace that reaches no resolver waits out the resolver's timeouts: seconds per
    # server. The name is never used.
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = ip, port

print(f"listening on {host(ip)}:{port}", flush=True)
Server((ip, port), Handler).serve_forever()
"#;

/// The echo server: TCP and UDP on one address (IPv4 or IPv6) and port. A UDP datagram is
/// answered with one datagram, a TCP line with one line, both `POD_IP CLIENT_IP:CLIENT_PORT
/// PAYLOAD` (an IPv6 client bracketed: `[CLIENT_IP]:CLIENT_PORT`).
const ECHO_SERVER: &str = r#"
import socket, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])

def host(addr):
    return f"[{addr}]" if ":" in addr else addr

def answer(peer, payload):
    return f"{ip} {host(peer[0])}:{peer[1]} ".encode() + payload

def udp(sock):
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(answer(peer, data), peer)

def session(conn, peer):
    with conn:
        for line in conn.makefile("rb"):
            conn.sendall(answer(peer, line))

family = socket.AF_INET6 if ":" in ip else socket.AF_INET
udp_sock = socket.socket(family, socket.SOCK_DGRAM)
udp_sock.bind((ip, port))
tcp_sock = socket.socket(family, socket.SOCK_STREAM)
tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp_sock.bind((ip, port))
tcp_sock.listen(64)
threading.Thread(target=udp, args=(udp_sock,), daemon=True).start()
print(f"echo listening on {host(ip)}:{port} tcp and udp", flush=True)
while True:
    conn, peer = tcp_sock.accept()
    threading.Thread(target=session, args=(conn, peer), daemon=True).start()
"#;

/// Starts the HTTP server on `ip:port` in `ns` (script and log in `dir`; IPv4 or IPv6) and waits
/// until it listens. Its answers carry `X-Pod-IP` and `X-Client-IP` (`lb_lab::probe::HttpReply`
/// reads them).
pub fn http(ns: &Netns, ip: impl Into<IpAddr>, port: u16, dir: &Path) -> Result<Process> {
    let ip = ip.into();
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

/// Starts the echo server on `ip:port` (TCP and UDP; IPv4 or IPv6) in `ns` (script and log in `dir`) and
/// waits until both sockets are bound. `lb_lab::probe::udp_echo` and `lb_lab::probe::EchoSession`
/// are its clients.
pub fn echo(ns: &Netns, ip: impl Into<IpAddr>, port: u16, dir: &Path) -> Result<Process> {
    let ip = ip.into();
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
    sockets: &[(&str, IpAddr, u16)],
) -> Result<()> {
    let what = format!("{} in {} to listen", process.log().display(), ns.name());
    process.wait_until(&what, crate::patience::SETTLE_WITHIN, || {
        for (flags, ip, port) in sockets {
            let out = ns.run("ss", &[flags]).map_err(|err| err.to_string())?;
            if !out.contains(&format!("{} ", SocketAddr::new(*ip, *port))) {
                return Err(format!("ss {flags}:\n{out}"));
            }
        }
        Ok(Some(()))
    })
}
