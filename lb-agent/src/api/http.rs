//! The agent's HTTP endpoint: `GET /metrics` in Prometheus' text format (version 0.0.4), the
//! liveness probe `GET /healthz` (alias `/livez`: 200 while the datapath is loaded and none of
//! its pins, links or readers has gone, whether or not the source is reachable) and the
//! readiness probe `GET /readyz` (200 once alive and the first sync is done); 503 otherwise.
//!
//! HTTP/1.1 is hyper's, one request per connection; connections are capped at
//! [`MAX_CONNECTIONS`] and bounded in time. The numbers come from [`ApiBackend::metrics`] and
//! [`ApiBackend::status`].

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use lb_api::drop::{hook_text, reason_text};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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

/// Connections served at once; more wait in the listen backlog. A scraper and the kubelet's
/// probes need a handful; the cap keeps a flood from costing more than that many tasks.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last in all (a request is answered in microseconds).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the HTTP endpoint.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves `/metrics` and the probes on `addr` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = bind(addr).await?;
    serve_listener(listener, backend, shutdown).await;
    Ok(())
}

/// Serves on a bound listener until `shutdown` is cancelled, at most [`MAX_CONNECTIONS`] at
/// once; a request still being answered ends with it.
pub async fn serve_listener(
    listener: TcpListener,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
) {
    serve_limited(listener, backend, shutdown, MAX_CONNECTIONS).await;
}

/// [`serve_listener`] with another cap on concurrent connections.
pub async fn serve_limited(
    listener: TcpListener,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
    max_connections: usize,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        // A permit before accepting: over the cap, connections wait in the kernel's backlog
        // instead of each costing a task and a buffer here.
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let backend = Arc::clone(&backend);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        result = tokio::time::timeout(CONNECTION_TIMEOUT, handle(stream, backend)) => {
                            if let Ok(Err(err)) = result {
                                tracing::debug!(error = %err, "http connection ended");
                            }
                        }
                    }
                    drop(permit);
                });
            }
            Err(err) => {
                // E.g. EMFILE: back off instead of spinning; the next accept may succeed.
                tracing::warn!(error = %err, "cannot accept http connection");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Answers one request on `stream` (HTTP/1.1 without keep-alive) and closes it.
pub async fn handle<S>(stream: S, backend: Arc<dyn ApiBackend>) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = route(request.method(), request.uri().path(), backend.as_ref());
        async move { Ok::<_, Infallible>(response) }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

/// The response to `method path`.
fn route(method: &Method, path: &str, backend: &dyn ApiBackend) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(&backend.metrics()),
        ),
        (&Method::GET, "/healthz" | "/livez") => match backend.status().not_live_reason() {
            None => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not alive: {reason}\n"),
            ),
        },
        (&Method::GET, "/readyz") => match backend.status().not_ready_reason() {
            None => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        (_, "/metrics" | "/healthz" | "/livez" | "/readyz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Escapes a label value per the text format (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A histogram's samples: a `_bucket` per bound and `+Inf`, then `_sum` and `_count`.
fn histogram(h: &crate::api::proto::Histogram) -> Vec<(String, String)> {
    let mut samples: Vec<(String, String)> = h
        .buckets
        .iter()
        .map(|(le, count)| (format!("_bucket{{le=\"{le}\"}}"), count.to_string()))
        .collect();
    samples.push(("_bucket{le=\"+Inf\"}".to_owned(), h.count.to_string()));
    samples.push(("_sum".to_owned(), h.sum.to_string()));
    samples.push(("_count".to_owned(), h.count.to_string()));
    samples
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
        "histogram",
        "Duration of sync passes, full and incremental.",
        histogram(&snapshot.sync_duration),
    );
    family(
        "lb_network_programming_duration_seconds",
        "histogram",
        "From an EndpointSlice's last-change-trigger-time annotation to the map write that \
         made the change live (kube-proxy's network_programming_duration_seconds).",
        histogram(&snapshot.network_programming_duration),
    );
    family(
        "lb_sync_repairs_total",
        "counter",
        "Map entries a periodic full resync found changed behind the agent's back, and repaired.",
        single(snapshot.sync_repairs.to_string()),
    );
    family(
        "lb_last_sync_duration_seconds",
        "gauge",
        "Duration of the last sync pass.",
        single(snapshot.last_sync_duration_seconds.to_string()),
    );
    family(
        "lb_ct_gc_deleted_total",
        "counter",
        "Expired conntrack entries deleted by the GC.",
        single(snapshot.ct_gc_deleted.to_string()),
    );
    family(
        "lb_ct_entries",
        "gauge",
        "Live conntrack entries at the last GC pass, by map.",
        vec![
            (
                "{map=\"tcp\"}".to_owned(),
                snapshot.ct_entries_tcp.to_string(),
            ),
            (
                "{map=\"any\"}".to_owned(),
                snapshot.ct_entries_any.to_string(),
            ),
        ],
    );
    family(
        "lb_datapath_healthy",
        "gauge",
        "1 while the datapath is loaded and none of its pins, links or readers has gone (as /healthz), else 0.",
        single(u8::from(snapshot.datapath_healthy).to_string()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::DropCount;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
            ct_gc_deleted: 5,
            ct_entries_tcp: 6,
            ct_entries_any: 2,
            datapath_healthy: true,
            sync_duration: {
                let mut h = crate::api::proto::Histogram::with_bounds(&[0.001, 1.0]);
                for seconds in [0.0005, 0.25, 0.25, 1.0] {
                    h.observe(seconds);
                }
                h
            },
            network_programming_duration: crate::api::proto::Histogram::with_bounds(&[0.001]),
            sync_repairs: 7,
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
# HELP lb_sync_duration_seconds Duration of sync passes, full and incremental.
# TYPE lb_sync_duration_seconds histogram
lb_sync_duration_seconds_bucket{le=\"0.001\"} 1
lb_sync_duration_seconds_bucket{le=\"1\"} 4
lb_sync_duration_seconds_bucket{le=\"+Inf\"} 4
lb_sync_duration_seconds_sum 1.5005
lb_sync_duration_seconds_count 4
# HELP lb_network_programming_duration_seconds From an EndpointSlice's last-change-trigger-time annotation to the map write that made the change live (kube-proxy's network_programming_duration_seconds).
# TYPE lb_network_programming_duration_seconds histogram
lb_network_programming_duration_seconds_bucket{le=\"0.001\"} 0
lb_network_programming_duration_seconds_bucket{le=\"+Inf\"} 0
lb_network_programming_duration_seconds_sum 0
lb_network_programming_duration_seconds_count 0
# HELP lb_sync_repairs_total Map entries a periodic full resync found changed behind the agent's back, and repaired.
# TYPE lb_sync_repairs_total counter
lb_sync_repairs_total 7
# HELP lb_last_sync_duration_seconds Duration of the last sync pass.
# TYPE lb_last_sync_duration_seconds gauge
lb_last_sync_duration_seconds 0.25
# HELP lb_ct_gc_deleted_total Expired conntrack entries deleted by the GC.
# TYPE lb_ct_gc_deleted_total counter
lb_ct_gc_deleted_total 5
# HELP lb_ct_entries Live conntrack entries at the last GC pass, by map.
# TYPE lb_ct_entries gauge
lb_ct_entries{map=\"tcp\"} 6
lb_ct_entries{map=\"any\"} 2
# HELP lb_datapath_healthy 1 while the datapath is loaded and none of its pins, links or readers has gone (as /healthz), else 0.
# TYPE lb_datapath_healthy gauge
lb_datapath_healthy 1
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
        fn config_view(&self) -> Vec<crate::api::proto::ConfigEntry> {
            Vec::new()
        }
        fn config_set(
            &self,
            _: crate::config::LiveChange,
        ) -> futures::future::BoxFuture<'static, Result<String, super::super::server::BoxError>>
        {
            Box::pin(async { Ok(String::new()) })
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
        let backend: Arc<dyn ApiBackend> = Arc::new(Fixed { ready });
        let serve = tokio::spawn(handle(server, backend));
        client.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        client.read_to_string(&mut response).await.expect("read");
        serve.await.expect("join").expect("serve");
        response
    }

    /// The status line and the body of a response.
    fn status_and_body(response: &str) -> (&str, &str) {
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        (head.lines().next().unwrap_or_default(), body)
    }

    #[tokio::test]
    async fn healthz_is_200_before_the_first_sync_and_readyz_only_after() {
        for path in ["/healthz", "/livez"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            for ready in [true, false] {
                let response = exchange(ready, &request).await;
                assert_eq!(
                    status_and_body(&response),
                    ("HTTP/1.1 200 OK", "ok\n"),
                    "{path}"
                );
            }
        }
        let request = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
        let response = exchange(true, request).await;
        assert_eq!(status_and_body(&response), ("HTTP/1.1 200 OK", "ok\n"));
        let response = exchange(false, request).await;
        assert_eq!(
            status_and_body(&response),
            (
                "HTTP/1.1 503 Service Unavailable",
                "not ready: first sync not done\n"
            )
        );
        assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
    }

    #[tokio::test]
    async fn metrics_are_served_and_other_paths_are_404() {
        let response = exchange(true, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        assert!(response.contains("\nlb_services 2\n"), "{response}");
        let response = exchange(true, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        let response = exchange(true, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_until_one_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let backend: Arc<dyn ApiBackend> = Arc::new(Fixed { ready: true });
        let server = tokio::spawn(serve_limited(listener, backend, shutdown.clone(), 2));
        let connect = || tokio::net::TcpStream::connect(addr);
        // Two clients that connect and say nothing hold both permits.
        let idle_1 = connect().await.expect("connect");
        let _idle_2 = connect().await.expect("connect");
        let mut third = connect().await.expect("connect (the backlog accepts it)");
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        let early = tokio::time::timeout(
            Duration::from_millis(300),
            third.read_to_string(&mut response),
        )
        .await;
        assert!(early.is_err(), "answered over the cap: {response:?}");
        // One idle client leaves: the third is served.
        drop(idle_1);
        tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut response))
            .await
            .expect("answered once a permit is free")
            .expect("read");
        assert_eq!(status_and_body(&response), ("HTTP/1.1 200 OK", "ok\n"));
        shutdown.cancel();
        server.await.expect("server stops");
    }
}
