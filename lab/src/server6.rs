//! The nginx pods' IPv6 HTTP server in a dual-stack lab: the answers of
//! `lb_testkit::servers::http` (`X-Pod-IP`, `X-Client-IP`, one log line per request) on an IPv6
//! socket. It lives here until lb-testkit's servers speak IPv6; then this file goes.
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use crate::Result;
use crate::netns::{Netns, Process};

const HTTP_SERVER6: &str = r#"
import http.server, socket, socketserver, sys
ip, port = sys.argv[1], int(sys.argv[2])

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lb-lab-nginx"

    def version_string(self):
        return self.server_version

    def answer(self, with_body):
        client, client_port = self.client_address[0], self.client_address[1]
        body = f"pod {ip} answered client [{client}]:{client_port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pod-IP", ip)
        self.send_header("X-Client-IP", client)
        self.send_header("Connection", "close")
        self.end_headers()
        if with_body:
            self.wfile.write(body)
        print(f"{self.command} {self.path} client=[{client}]:{client_port}", flush=True)

    def do_GET(self):
        self.answer(True)

    def do_HEAD(self):
        self.answer(False)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True

    # As the IPv4 server: no reverse DNS lookup of the address at bind.
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = ip, port

print(f"listening on [{ip}]:{port}", flush=True)
Server((ip, port), Handler).serve_forever()
"#;

/// Starts the IPv6 HTTP server on `[ip]:port` in `ns` (script and log in `dir`) and waits until
/// it listens.
pub fn http(ns: &Netns, ip: Ipv6Addr, port: u16, dir: &Path) -> Result<Process> {
    let script = dir.join("http-server6.py");
    lb_testkit::write_file(&script, HTTP_SERVER6)?;
    let log = dir.join(format!("{}-http6-{ip}-{port}.log", ns.name()));
    let args = [
        &*script.to_string_lossy(),
        &ip.to_string(),
        &port.to_string(),
    ];
    let mut process = ns.spawn("python3", &args, &log)?;
    let listening = format!("[{ip}]:{port}");
    process.wait_until(
        &format!(
            "the IPv6 HTTP server in {} to listen on {listening}",
            ns.name()
        ),
        Duration::from_secs(20),
        || {
            let sockets = ns.run("ss", &["-Hltn6"]).map_err(|err| err.to_string())?;
            if sockets.contains(&listening) {
                Ok(Some(()))
            } else {
                Err(sockets)
            }
        },
    )?;
    Ok(process)
}
