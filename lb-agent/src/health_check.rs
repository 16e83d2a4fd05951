//! `healthCheckNodePort`: what a cloud load balancer asks each node about an
//! externalTrafficPolicy Local Service, answered as kube-proxy answers it.
//!
//! For each [`HealthCheck`] of the model, an HTTP server on TCP `port` of each node-port
//! address says 200 while the Service has a ready endpoint on this node and 503 otherwise, with
//! a JSON body naming the Service and the count (`{"service":{"namespace":…,"name":…},
//! "localEndpoints":N,"serviceProxyHealthy":true}`), so that the load balancer sends traffic
//! only to nodes that can serve it without leaving the node.
//!
//! [`HealthCheckServer::update`] is called after each model pass with the full list: it opens
//! listeners for new ports, closes those of Services that went away or moved, and changes the
//! answers of the others in place. It binds and spawns but never waits, so the sync is not held
//! up. A port that cannot be bound is a warning naming the Service, retried on the next pass.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::model::HealthCheck;
use crate::sync::lock;
use crate::telemetry::error_chain;

/// Why a health-check port cannot be served (logged, never returned to the loop).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No node-port address was found at start, so there is nothing to listen on.
    #[error("this node has no node-port address; set --node-ip or give --devices an IPv4 address")]
    NoAddress,
    /// Binding failed, typically because another process holds the port.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address and port.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed accept (e.g. EMFILE), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one port answers: the Service it belongs to and its ready local endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Status {
    namespace: String,
    name: String,
    local_ready: usize,
}

impl Status {
    fn of(check: &HealthCheck) -> Self {
        Self {
            namespace: check.namespace.clone(),
            name: check.name.clone(),
            local_ready: check.local_ready,
        }
    }
}

/// One health-check port.
enum Slot {
    /// Listening on every node-port address; `stop` closes the listeners and connections.
    Serving {
        status: Arc<Mutex<Status>>,
        stop: CancellationToken,
    },
    /// Binding failed for this Service (`namespace/name`); retried on each update, and warned
    /// about again only when another Service takes the port.
    Failed { owner: String },
}

/// The health-check listeners of this node, one per port, on every node-port address.
pub struct HealthCheckServer {
    addresses: Vec<IpAddr>,
    shutdown: CancellationToken,
    slots: Mutex<BTreeMap<u16, Slot>>,
    /// The runtime that serves the listeners: the one `new` ran on, not the sync thread's.
    runtime: tokio::runtime::Handle,
}

impl HealthCheckServer {
    /// A server for `addresses` (the model's `ThisNode::addresses`) with no port open yet;
    /// everything it opens closes with `shutdown`. Must be called within a tokio runtime,
    /// which serves the listeners `update` opens from whatever thread calls it.
    pub fn new(addresses: Vec<IpAddr>, shutdown: CancellationToken) -> Self {
        Self {
            addresses,
            shutdown,
            slots: Mutex::new(BTreeMap::new()),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Serves exactly `checks` from now on (the model gives at most one per port).
    pub fn update(&self, checks: &[HealthCheck]) {
        let mut slots = lock(&self.slots);
        slots.retain(|port, slot| {
            let wanted = checks.iter().any(|check| check.port == *port);
            if !wanted && let Slot::Serving { status, stop } = slot {
                stop.cancel();
                let status = lock(status);
                info!(namespace = %status.namespace, name = %status.name, port, "closed health check");
            }
            wanted
        });
        for check in checks {
            let owner = format!("{}/{}", check.namespace, check.name);
            let warned = match slots.get(&check.port) {
                Some(Slot::Serving { status, .. }) => {
                    *lock(status) = Status::of(check);
                    continue;
                }
                Some(Slot::Failed { owner: failed }) => *failed == owner,
                None => false,
            };
            let slot = match self.open(check) {
                Ok(slot) => {
                    info!(namespace = %check.namespace, name = %check.name, port = check.port, addresses = ?self.addresses, "serving health check");
                    slot
                }
                Err(err) => {
                    let error = error_chain(&err);
                    if warned {
                        debug!(namespace = %check.namespace, name = %check.name, port = check.port, error = %error, "health check port still unavailable");
                    } else {
                        warn!(namespace = %check.namespace, name = %check.name, port = check.port, error = %error, "cannot serve healthCheckNodePort; retrying on the next change");
                    }
                    Slot::Failed { owner }
                }
            };
            slots.insert(check.port, slot);
        }
    }

    /// The ports listened on now, in order.
    pub fn serving(&self) -> Vec<u16> {
        lock(&self.slots)
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Serving { .. }))
            .map(|(port, _)| *port)
            .collect()
    }

    /// Binds `check.port` on every address (all or none) and serves them.
    fn open(&self, check: &HealthCheck) -> io::Result<Slot> {
        if self.addresses.is_empty() {
            return Err(io::Error::other("this node has no node-port address"));
        }
        // The listeners register with the agent's runtime, whatever thread calls (the sync
        // thread's runtime has no IO driver).
        let _entered = self.runtime.enter();
        let mut listeners = Vec::with_capacity(self.addresses.len());
        for addr in &self.addresses {
            let addr = SocketAddr::new(*addr, check.port);
            let bound =
                bind(addr).map_err(|err| io::Error::new(err.kind(), format!("{addr}: {err}")))?;
            // On an error, those bound so far close as `listeners` drops.
            listeners.push(bound);
        }
        let status = Arc::new(Mutex::new(Status::of(check)));
        let stop = self.shutdown.child_token();
        for listener in listeners {
            self.runtime
                .spawn(serve(listener, status.clone(), stop.clone()));
        }
        Ok(Slot::Serving { status, stop })
    }
}

impl Drop for HealthCheckServer {
    fn drop(&mut self) {
        for slot in lock(&self.slots).values() {
            if let Slot::Serving { stop, .. } = slot {
                stop.cancel();
            }
        }
    }
}

/// A non-blocking listener on `addr`; std's bind sets `SO_REUSEADDR`, so a port closed with
/// connections in TIME_WAIT can be opened again at once.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Accepts on `listener` until `stop`, each connection in its own task that ends with `stop`.
async fn serve(listener: TcpListener, status: Arc<Mutex<Status>>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!(error = %err, "cannot accept a health check connection");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let status = status.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // Any method and path gets the answer, as from kube-proxy.
            let service = service_fn(move |_request| {
                let response = answer(&lock(&status));
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                result = connection => if let Err(err) = result {
                    debug!(error = %err, "health check connection ended");
                }
            }
        });
    }
}

/// The body, in kube-proxy's shape and field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    service: ServiceName<'a>,
    local_endpoints: usize,
    /// The agent answers only while it runs, and a failed sync keeps the last good state
    /// serving, so the proxy side is healthy whenever this is sent.
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// 200 with a ready local endpoint, 503 without.
fn answer(status: &Status) -> Response<Full<Bytes>> {
    let payload = Payload {
        service: ServiceName {
            namespace: &status.namespace,
            name: &status.name,
        },
        local_endpoints: status.local_ready,
        service_proxy_healthy: true,
    };
    // Serializing strings and numbers into a Vec cannot fail; an empty body would still carry
    // the status, which is what load balancers read.
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = if status.local_ready > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn check(name: &str, port: u16, local_ready: usize) -> HealthCheck {
        HealthCheck {
            namespace: "ns1".to_owned(),
            name: name.to_owned(),
            port,
            local_ready,
        }
    }

    /// A port free on loopback right now.
    fn free_port() -> u16 {
        std::net::TcpListener::bind((LOOPBACK, 0))
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port()
    }

    /// One GET on `port`: the status code and the body, or the connect error.
    async fn get(port: u16) -> io::Result<(u16, serde_json::Value)> {
        let mut stream = tokio::net::TcpStream::connect((LOOPBACK, port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let body = text.split("\r\n\r\n").nth(1).expect("a body");
        Ok((code, serde_json::from_str(body).expect("a JSON body")))
    }

    #[tokio::test]
    async fn answers_200_with_local_endpoints_503_without_and_closes_with_the_service() {
        let server = HealthCheckServer::new(vec![LOOPBACK.into()], CancellationToken::new());
        let port = free_port();
        server.update(&[check("web", port, 2)]);
        let (code, body) = get(port).await.expect("served");
        assert_eq!(code, 200);
        assert_eq!(
            body,
            serde_json::json!({"service": {"namespace": "ns1", "name": "web"},
                               "localEndpoints": 2, "serviceProxyHealthy": true})
        );

        // The count changes in place: same listener, new answer.
        server.update(&[check("web", port, 0)]);
        let (code, body) = get(port).await.expect("served");
        assert_eq!(code, 503);
        assert_eq!(body["localEndpoints"], 0);

        // Gone from the model: the port closes.
        server.update(&[]);
        assert_eq!(server.serving(), Vec::<u16>::new());
        assert!(closes(port).await, "port {port} still open");
    }

    #[tokio::test]
    async fn a_port_opened_from_the_sync_threads_runtime_is_served_by_the_agents() {
        let server = Arc::new(HealthCheckServer::new(
            vec![LOOPBACK.into()],
            CancellationToken::new(),
        ));
        let port = free_port();
        // As the reconcile loop does: another thread, a runtime with timers but no IO.
        std::thread::spawn({
            let server = server.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime");
                runtime.block_on(async { server.update(&[check("web", port, 1)]) });
            }
        })
        .join()
        .expect("update does not panic");
        let (code, _) = get(port).await.expect("served");
        assert_eq!(code, 200);
    }

    /// True once `port` refuses connections. The accept task drops its listener when it next
    /// runs after being stopped, so yield to it a bounded number of times.
    async fn closes(port: u16) -> bool {
        for _ in 0..100 {
            match get(port).await {
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => return true,
                _ => tokio::task::yield_now().await,
            }
        }
        false
    }

    #[tokio::test]
    async fn a_port_in_use_is_skipped_and_retried_while_the_others_are_served() {
        let taken = std::net::TcpListener::bind((LOOPBACK, 0)).expect("bind");
        let busy = taken.local_addr().expect("address").port();
        let free = free_port();
        let server = HealthCheckServer::new(vec![LOOPBACK.into()], CancellationToken::new());
        server.update(&[check("a", busy, 1), check("b", free, 1)]);
        assert_eq!(server.serving(), [free]);
        assert_eq!(get(free).await.expect("served").0, 200);

        // Released: the next update opens it.
        drop(taken);
        server.update(&[check("a", busy, 1), check("b", free, 1)]);
        assert_eq!(server.serving(), {
            let mut both = vec![busy, free];
            both.sort_unstable();
            both
        });
        assert_eq!(get(busy).await.expect("served").1["service"]["name"], "a");
    }

    #[tokio::test]
    async fn a_service_moved_to_another_port_is_served_there_only() {
        let server = HealthCheckServer::new(vec![LOOPBACK.into()], CancellationToken::new());
        let old = free_port();
        let new = std::iter::repeat_with(free_port)
            .find(|port| *port != old)
            .expect("another free port");
        server.update(&[check("web", old, 1)]);
        assert_eq!(get(old).await.expect("served").0, 200);
        server.update(&[check("web", new, 1)]);
        assert_eq!(server.serving(), [new]);
        assert_eq!(get(new).await.expect("served").0, 200);
        assert!(closes(old).await, "old port {old} still open");
    }

    #[tokio::test]
    async fn shutdown_closes_every_port() {
        let shutdown = CancellationToken::new();
        let server = HealthCheckServer::new(vec![LOOPBACK.into()], shutdown.clone());
        let port = free_port();
        server.update(&[check("web", port, 1)]);
        assert_eq!(get(port).await.expect("served").0, 200);
        shutdown.cancel();
        assert!(closes(port).await, "port {port} still open after shutdown");
    }
}
