//! The story's probes, as a user types them: `curl` and `ping` inside a namespace, and what
//! their output says (status, which pod answered, which client address the pod saw); and the
//! echo server's clients ([`udp_echo`], [`EchoSession`]), sockets opened inside a namespace by
//! this process, which say which backend answered.
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use crate::netns::{Netns, Outcome};
use crate::{Error, Result};

/// Seconds curl waits before giving up (`--max-time`): a dropped SYN fails in this time.
pub const CURL_MAX_TIME: &str = "3";

/// What an HTTP answer from one of the lab's servers says; `A` is the address family the
/// request went over (`Ipv6Addr` for [`curl6_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply<A = Ipv4Addr> {
    /// The status code of the first status line (`HTTP/1.1 200 OK` → 200).
    pub status: Option<u16>,
    /// `X-Pod-IP`: the pod that answered.
    pub pod_ip: Option<A>,
    /// `X-Client-IP`: the client address the pod saw.
    pub client_ip: Option<A>,
}

impl<A> Default for HttpReply<A> {
    fn default() -> Self {
        Self {
            status: None,
            pod_ip: None,
            client_ip: None,
        }
    }
}

impl<A: FromStr> HttpReply<A> {
    /// Parses `curl -sI` (or `curl -si`) output.
    pub fn parse(text: &str) -> Self {
        let mut reply = Self::default();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if reply.status.is_none() && line.starts_with("HTTP/") {
                reply.status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            } else if let Some((name, value)) = line.split_once(':') {
                let value = value.trim().parse().ok();
                match name.to_ascii_lowercase().as_str() {
                    "x-pod-ip" => reply.pod_ip = value,
                    "x-client-ip" => reply.client_ip = value,
                    _ => {}
                }
            }
        }
        reply
    }
}

/// `curl -sI --max-time 3 http://TARGET/` inside `ns`: the outcome (to print) and the parsed
/// answer (status `None` when nothing came back).
pub fn curl_head(ns: &Netns, target: Ipv4Addr) -> Result<(Outcome, HttpReply)> {
    let url = format!("http://{target}/");
    let outcome = ns.exec("curl", &["-sSI", "--max-time", CURL_MAX_TIME, &url])?;
    let reply = HttpReply::parse(&outcome.stdout);
    Ok((outcome, reply))
}

/// `curl -sSI -6 -g --max-time 3 http://[TARGET]/` inside `ns`: [`curl_head`] over IPv6.
pub fn curl6_head(ns: &Netns, target: Ipv6Addr) -> Result<(Outcome, HttpReply<Ipv6Addr>)> {
    let url = format!("http://[{target}]/");
    let outcome = ns.exec(
        "curl",
        &["-sSI", "-6", "-g", "--max-time", CURL_MAX_TIME, &url],
    )?;
    let reply = HttpReply::parse(&outcome.stdout);
    Ok((outcome, reply))
}

/// `curl -s --max-time 3 http://TARGET/` inside `ns` (GET: the body names pod and client).
pub fn curl_get(ns: &Netns, target: Ipv4Addr) -> Result<(Outcome, HttpReply)> {
    let url = format!("http://{target}/");
    let outcome = ns.exec("curl", &["-sSi", "--max-time", CURL_MAX_TIME, &url])?;
    let reply = HttpReply::parse(&outcome.stdout);
    Ok((outcome, reply))
}

/// `curl -s --max-time 3 http://TARGET/` inside `ns`, for a target on any port.
pub fn http_get(ns: &Netns, target: SocketAddrV4) -> Result<(Outcome, HttpReply)> {
    let url = format!("http://{target}/");
    let outcome = ns.exec("curl", &["-sSi", "--max-time", CURL_MAX_TIME, &url])?;
    let reply = HttpReply::parse(&outcome.stdout);
    Ok((outcome, reply))
}

/// An answer of the echo server (`crate::servers::echo`): `POD_IP CLIENT_IP:PORT PAYLOAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoReply {
    /// The pod that answered.
    pub pod_ip: Ipv4Addr,
    /// The client address and port the pod saw.
    pub client: SocketAddrV4,
    /// What was sent, echoed back (without a trailing newline).
    pub payload: String,
}

impl EchoReply {
    /// Parses one answer; `None` when it is not the echo server's.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut words = text.splitn(3, ' ');
        let pod_ip = words.next()?.parse().ok()?;
        let client = words.next()?.parse().ok()?;
        let payload = words.next().unwrap_or("").to_owned();
        Some(Self {
            pod_ip,
            client,
            payload,
        })
    }
}

/// Sends `payload` in one UDP datagram from `source` (port 0: any) to `target` inside `ns`, on a
/// connected socket (so only an answer from `target` itself counts), and waits up to `timeout`
/// for the answer. `Ok(Err(why))` when none came (timeout, ICMP error) or it was not the echo
/// server's.
pub fn udp_echo(
    ns: &Netns,
    source: SocketAddrV4,
    target: SocketAddrV4,
    payload: &str,
    timeout: Duration,
) -> Result<std::result::Result<EchoReply, String>> {
    let exchange = || -> std::io::Result<Vec<u8>> {
        let socket = UdpSocket::bind(source)?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send(payload.as_bytes())?;
        let mut buf = vec![0u8; 2048];
        let n = socket.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    };
    Ok(match ns.within(exchange)? {
        Ok(answer) => {
            let text = String::from_utf8_lossy(&answer);
            EchoReply::parse(&text).ok_or_else(|| format!("not an echo answer: {text:?}"))
        }
        Err(err) => Err(format!("udp {source} -> {target}: {err}")),
    })
}

/// A TCP connection to the echo server, opened inside a namespace and held by this process:
/// it lives until dropped, whatever happens to the maps meanwhile.
#[derive(Debug)]
pub struct EchoSession {
    reader: BufReader<TcpStream>,
    local: SocketAddrV4,
    target: SocketAddrV4,
}

impl EchoSession {
    /// Connects from inside `ns` to `target` within `timeout`; every later exchange waits at
    /// most `timeout` too.
    pub fn connect(ns: &Netns, target: SocketAddrV4, timeout: Duration) -> Result<Self> {
        let connect = || -> std::io::Result<(TcpStream, SocketAddr)> {
            let stream = TcpStream::connect_timeout(&target.into(), timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            let local = stream.local_addr()?;
            Ok((stream, local))
        };
        let (stream, local) = ns.within(connect)?.map_err(|source| Error::Io {
            action: "connect to",
            path: format!("{target} from {}", ns.name()).into(),
            source,
        })?;
        let SocketAddr::V4(local) = local else {
            return Err(Error::Unexpected(format!("{local} is not IPv4")));
        };
        Ok(Self {
            reader: BufReader::new(stream),
            local,
            target,
        })
    }

    /// This end of the connection.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// Sends `line` and reads the echo server's answer to it.
    pub fn ask(&mut self, line: &str) -> Result<EchoReply> {
        let io = |source| Error::Io {
            action: "exchange a line over",
            path: format!("{} -> {}", self.local, self.target).into(),
            source,
        };
        let stream = self.reader.get_mut();
        stream
            .write_all(format!("{line}\n").as_bytes())
            .map_err(io)?;
        let mut answer = String::new();
        let n = self.reader.read_line(&mut answer).map_err(io)?;
        if n == 0 {
            return Err(Error::Unexpected(format!(
                "{} -> {}: the connection was closed",
                self.local, self.target
            )));
        }
        EchoReply::parse(&answer)
            .ok_or_else(|| Error::Unexpected(format!("not an echo answer: {answer:?}")))
    }
}

/// `ping -c COUNT -W 2 TARGET` (`ping -6 …` for an IPv6 target) inside `ns`, and how many
/// replies came back.
pub fn ping(ns: &Netns, target: impl Into<IpAddr>, count: u32) -> Result<(Outcome, u32)> {
    let target = target.into();
    let count = count.to_string();
    let target_text = target.to_string();
    let mut args = vec!["-c", &count, "-W", "2", &target_text];
    if target.is_ipv6() {
        args.insert(0, "-6");
    }
    let outcome = ns.exec("ping", &args)?;
    let received = outcome
        .stdout
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(" transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0);
    Ok((outcome, received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_pod_and_client_from_curl_head_output() {
        let text = "HTTP/1.1 200 OK\r\nServer: lb-lab-nginx\r\nX-Pod-IP: 10.112.1.90\r\n\
                    X-Client-IP: 192.168.56.4\r\nConnection: close\r\n\r\n";
        assert_eq!(
            HttpReply::parse(text),
            HttpReply {
                status: Some(200),
                pod_ip: Some(Ipv4Addr::new(10, 112, 1, 90)),
                client_ip: Some(Ipv4Addr::new(192, 168, 56, 4)),
            }
        );
    }

    #[test]
    fn parses_pod_client_and_payload_from_an_echo_answer() {
        assert_eq!(
            EchoReply::parse("10.244.1.20 10.244.1.10:40000 hello world\n"),
            Some(EchoReply {
                pod_ip: Ipv4Addr::new(10, 244, 1, 20),
                client: "10.244.1.10:40000".parse().expect("address"),
                payload: "hello world".into(),
            })
        );
        assert_eq!(EchoReply::parse("HTTP/1.1 200 OK"), None);
    }

    #[test]
    fn parses_ipv6_pod_and_client() {
        let text = "HTTP/1.1 200 OK\r\nX-Pod-IP: fd00:10:112:1::c2\r\n\
                    X-Client-IP: fd00:56::10\r\n\r\n";
        let reply: HttpReply<Ipv6Addr> = HttpReply::parse(text);
        assert_eq!(reply.status, Some(200));
        assert_eq!(reply.pod_ip, "fd00:10:112:1::c2".parse().ok());
        assert_eq!(reply.client_ip, "fd00:56::10".parse().ok());
        // An IPv6 answer read as IPv4 names nobody, rather than the wrong pod.
        assert_eq!(HttpReply::<Ipv4Addr>::parse(text).pod_ip, None);
    }

    #[test]
    fn no_answer_parses_to_nothing() {
        assert_eq!(HttpReply::<Ipv4Addr>::parse(""), HttpReply::default());
    }
}
