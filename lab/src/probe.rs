//! The story's probes, as a user types them: `curl` and `ping` inside a namespace, and what
//! their output says (status, which pod answered, which client address the pod saw).
use std::net::Ipv4Addr;

use crate::Result;
use crate::netns::{Netns, Outcome};

/// Seconds curl waits before giving up (`--max-time`): a dropped SYN fails in this time.
pub const CURL_MAX_TIME: &str = "3";

/// What an HTTP answer from one of the lab's servers says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpReply {
    /// The status code of the first status line (`HTTP/1.1 200 OK` → 200).
    pub status: Option<u16>,
    /// `X-Pod-IP`: the pod that answered.
    pub pod_ip: Option<Ipv4Addr>,
    /// `X-Client-IP`: the client address the pod saw.
    pub client_ip: Option<Ipv4Addr>,
}

impl HttpReply {
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

/// `curl -s --max-time 3 http://TARGET/` inside `ns` (GET: the body names pod and client).
pub fn curl_get(ns: &Netns, target: Ipv4Addr) -> Result<(Outcome, HttpReply)> {
    let url = format!("http://{target}/");
    let outcome = ns.exec("curl", &["-sSi", "--max-time", CURL_MAX_TIME, &url])?;
    let reply = HttpReply::parse(&outcome.stdout);
    Ok((outcome, reply))
}

/// `ping -c COUNT -W 2 TARGET` inside `ns`, and how many replies came back.
pub fn ping(ns: &Netns, target: Ipv4Addr, count: u32) -> Result<(Outcome, u32)> {
    let count = count.to_string();
    let outcome = ns.exec("ping", &["-c", &count, "-W", "2", &target.to_string()])?;
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
    fn no_answer_parses_to_nothing() {
        assert_eq!(HttpReply::parse(""), HttpReply::default());
    }
}
