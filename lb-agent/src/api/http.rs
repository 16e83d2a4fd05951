//! The agent's HTTP endpoint: `GET /metrics` in Prometheus' text format (version 0.0.4), the
//! liveness probe `GET /healthz` (alias `/livez`: 200 while the datapath is loaded and none of
//! its pins, links or readers has gone, whether or not the source is reachable) and the
//! readiness probe `GET /readyz` (200 once alive and the first sync is done); 503 otherwise. A deliberately tiny HTTP/1.1 server: one
//! request per connection, no bodies, `Connection: close`, which is all scrapers and kubelet
//! probes need.
//!
//! The numbers come from [`ApiBackend::metrics`] and [`ApiBackend::status`].

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lb_api::drop::{hook_text, reason_text};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::proto::MetricsSnapshot;
use super::server::ApiBackend;

/// Errors setting up the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding failed.
    #[error("cannot listen on metrics address {addr}; change --metrics-address or set it empty")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Longest request head read; anything longer is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the HTTP endpoint.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = bind(addr).await?;
    serve_listener(listener, backend, shutdown).await;
    Ok(())
}

/// Serves on a bound listener until `shutdown` is cancelled; a request still being answered
/// ends with it.
pub async fn serve_listener(
    listener: TcpListener,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
) {
    super::accept::serve(listener, "http", shutdown, move |stream| {
        let backend = Arc::clone(&backend);
        async move { handle(stream, backend.as_ref()).await }
    })
    .await;
}

/// Answers one request on `stream` and closes it.
pub async fn handle<S>(mut stream: S, backend: &dyn ApiBackend) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = match head {
        None => (431, "text/plain", "request header too large\n".to_owned()),
        Some(head) => route(&head, backend),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line ending the request head; `None` if it exceeds [`MAX_HEAD`].
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..read).unwrap_or_default());
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// Status, content type and body for a request head.
fn route(head: &str, backend: &dyn ApiBackend) -> (u16, &'static str, String) {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("/"),
    );
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(&backend.metrics()),
        ),
        ("GET", "/healthz" | "/livez") => match backend.status().not_live_reason() {
            None => (200, "text/plain", "ok\n".to_owned()),
            Some(reason) => (503, "text/plain", format!("not alive: {reason}\n")),
        },
        ("GET", "/readyz") => match backend.status().not_ready_reason() {
            None => (200, "text/plain", "ok\n".to_owned()),
            Some(reason) => (503, "text/plain", format!("not ready: {reason}\n")),
        },
        (_, "/metrics" | "/healthz" | "/livez" | "/readyz") => {
            (405, "text/plain", "only GET is served\n".to_owned())
        }
        _ => (
            404,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// Escapes a label value per the text format (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of a snapshot.
pub fn render_metrics(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let mut drops = snapshot.drops.clone();
    drops.sort_by_key(|count| (count.reason, count.hook));

    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let drop_labels = |reason: u8, hook: u8| {
        format!(
            "{{reason=\"{}\",reason_code=\"{reason}\",hook=\"{}\"}}",
            label(&reason_text(reason)),
            label(&hook_text(hook))
        )
    };
    family(
        "lb_drop_count_total",
        "counter",
        "Packets dropped by the datapath, by reason and hook.",
        drops
            .iter()
            .map(|c| (drop_labels(c.reason, c.hook), c.packets.to_string()))
            .collect(),
    );
    family(
        "lb_drop_bytes_total",
        "counter",
        "Bytes dropped by the datapath, by reason and hook.",
        drops
            .iter()
            .map(|c| (drop_labels(c.reason, c.hook), c.bytes.to_string()))
            .collect(),
    );
    let single = |value: String| vec![(String::new(), value)];
    family(
        "lb_services",
        "gauge",
        "Services programmed in the datapath.",
        single(snapshot.services.to_string()),
    );
    family(
        "lb_backends",
        "gauge",
        "Backends programmed in the datapath.",
        single(snapshot.backends.to_string()),
    );
    family(
        "lb_sync_total",
        "counter",
        "Completed sync passes.",
        single(snapshot.syncs.to_string()),
    );
    family(
        "lb_sync_errors_total",
        "counter",
        "Sync passes that failed.",
        single(snapshot.sync_errors.to_string()),
    );
    family(
        "lb_sync_duration_seconds",
        "summary",
        "Duration of sync passes.",
        vec![
            (
                "_sum".to_owned(),
                snapshot.sync_duration_seconds_sum.to_string(),
            ),
            ("_count".to_owned(), snapshot.syncs.to_string()),
        ],
    );
    family(
        "lb_last_sync_duration_seconds",
        "gauge",
        "Duration of the last sync pass.",
        single(snapshot.last_sync_duration_seconds.to_string()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::DropCount;

    #[test]
    fn metrics_render_as_prometheus_text() {
        let snapshot = MetricsSnapshot {
            drops: vec![
                DropCount {
                    reason: 174,
                    hook: 1,
                    packets: 3,
                    bytes: 180,
                },
                DropCount {
                    reason: 158,
                    hook: 2,
                    packets: 1,
                    bytes: 60,
                },
            ],
            services: 2,
            backends: 3,
            syncs: 4,
            sync_errors: 1,
            last_sync_duration_seconds: 0.25,
            sync_duration_seconds_sum: 1.5,
        };
        let expected = "\
# HELP lb_drop_count_total Packets dropped by the datapath, by reason and hook.
# TYPE lb_drop_count_total counter
lb_drop_count_total{reason=\"Service backend not found\",reason_code=\"158\",hook=\"from-pod\"} 1
lb_drop_count_total{reason=\"Is a ClusterIP\",reason_code=\"174\",hook=\"from-netdev\"} 3
# HELP lb_drop_bytes_total Bytes dropped by the datapath, by reason and hook.
# TYPE lb_drop_bytes_total counter
lb_drop_bytes_total{reason=\"Service backend not found\",reason_code=\"158\",hook=\"from-pod\"} 60
lb_drop_bytes_total{reason=\"Is a ClusterIP\",reason_code=\"174\",hook=\"from-netdev\"} 180
# HELP lb_services Services programmed in the datapath.
# TYPE lb_services gauge
lb_services 2
# HELP lb_backends Backends programmed in the datapath.
# TYPE lb_backends gauge
lb_backends 3
# HELP lb_sync_total Completed sync passes.
# TYPE lb_sync_total counter
lb_sync_total 4
# HELP lb_sync_errors_total Sync passes that failed.
# TYPE lb_sync_errors_total counter
lb_sync_errors_total 1
# HELP lb_sync_duration_seconds Duration of sync passes.
# TYPE lb_sync_duration_seconds summary
lb_sync_duration_seconds_sum 1.5
lb_sync_duration_seconds_count 4
# HELP lb_last_sync_duration_seconds Duration of the last sync pass.
# TYPE lb_last_sync_duration_seconds gauge
lb_last_sync_duration_seconds 0.25
";
        assert_eq!(render_metrics(&snapshot), expected);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// A backend with fixed numbers and a settable readiness.
    struct Fixed {
        ready: bool,
    }

    impl ApiBackend for Fixed {
        fn status(&self) -> crate::api::proto::StatusReply {
            crate::api::proto::StatusReply {
                datapath_loaded: true,
                synced: self.ready,
                ..Default::default()
            }
        }
        fn services(&self) -> Vec<crate::api::proto::ServiceRow> {
            Vec::new()
        }
        fn config_view(&self) -> std::collections::BTreeMap<String, String> {
            Default::default()
        }
        fn config_set(
            &self,
            _: crate::config::LiveChange,
        ) -> futures::future::BoxFuture<'static, Result<(), super::super::server::BoxError>>
        {
            Box::pin(async { Ok(()) })
        }
        fn subscribe_drops(
            &self,
        ) -> tokio::sync::broadcast::Receiver<crate::api::proto::DropEventRecord> {
            crate::monitor::DropFanout::default().subscribe()
        }
        fn metrics(&self) -> MetricsSnapshot {
            MetricsSnapshot {
                services: 2,
                ..Default::default()
            }
        }
    }

    /// Sends `request` through [`handle`] over an in-memory pipe and returns the response.
    async fn exchange(ready: bool, request: &str) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let backend = Fixed { ready };
        let serve = handle(server, &backend);
        let talk = async {
            client.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            client.read_to_string(&mut response).await.expect("read");
            response
        };
        let (served, response) = tokio::join!(serve, talk);
        served.expect("serve");
        response
    }

    #[tokio::test]
    async fn healthz_is_200_before_the_first_sync_and_readyz_only_after() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
        for path in ["/healthz", "/livez"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(exchange(true, &request).await, ok, "{path}");
            assert_eq!(exchange(false, &request).await, ok, "{path}");
        }
        let request = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(exchange(true, request).await, ok);
        assert_eq!(
            exchange(false, request).await,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\n\r\nnot ready: first sync not done\n"
        );
    }

    #[tokio::test]
    async fn metrics_are_served_and_other_paths_are_404() {
        let response = exchange(true, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            response.starts_with(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            ),
            "{response}"
        );
        assert!(response.contains("\nlb_services 2\n"), "{response}");
        let response = exchange(true, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        let response = exchange(true, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{response}"
        );
    }
}
