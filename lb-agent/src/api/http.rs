//! The agent's HTTP endpoint: `GET /metrics` in Prometheus' text format (version 0.0.4), the
//! liveness probe `GET /healthz` (alias `/livez`: 200 while the datapath is loaded and none of
//! its pins, links or readers has gone, whether or not the source is reachable) and the
//! readiness probe `GET /readyz` (200 once alive and the first sync is done); 503 otherwise.
//!
//! HTTP/1.1 is hyper's, one request per connection; connections are capped at
//! [`MAX_CONNECTIONS`] and bounded in time. The numbers come from [`ApiBackend::metrics`] and
//! [`ApiBackend::status`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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
            super::metrics::CONTENT_TYPE,
            super::metrics::render(&backend.metrics()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::MetricsSnapshot;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
