//! A fake Kubernetes API server on 127.0.0.1 that serves what kube-rs watchers ask for:
//! LIST and WATCH of `core/v1` Services and Nodes and `discovery.k8s.io/v1` EndpointSlices.
//!
//! Faithful where lb depends on it: every write bumps one global resourceVersion (RV); a LIST
//! answers with the current RV (paged with `limit`/`continue`) and honours `labelSelector`
//! (`key`, `!key`, `key=value`) and `fieldSelector` (`metadata.name=NAME`); a WATCH streams events after the requested RV, sends
//! BOOKMARKs when `allowWatchBookmarks=true`, and answers an RV older than the compaction point
//! with an `ERROR` event `Status{code: 410, reason: Expired}`, as the apiserver does. Tests can
//! also partition a collection (events stop flowing), expire it (410 mid-stream on every open
//! watch), and fail the next LISTs with 500. Anything else is logged and answered 404.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// How often an open watch sends a BOOKMARK (the apiserver does it about once a minute; tests
/// want it sooner).
pub const BOOKMARK_EVERY: Duration = Duration::from_millis(100);

/// The collections the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `/api/v1/services`
    Service,
    /// `/apis/discovery.k8s.io/v1/endpointslices`
    EndpointSlice,
    /// `/api/v1/nodes`
    Node,
}

impl Kind {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/services" => Some(Self::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Self::EndpointSlice),
            "/api/v1/nodes" => Some(Self::Node),
            _ => None,
        }
    }

    fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Self::Service => ("v1", "Service"),
            Self::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSlice"),
            Self::Node => ("v1", "Node"),
        }
    }
}

/// What the server saw and sent for one collection.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// LIST requests answered successfully.
    pub lists: u32,
    /// LIST requests failed on purpose with 500.
    pub failed_lists: u32,
    /// WATCH requests.
    pub watches: u32,
    /// Watches currently streaming.
    pub open_watches: u32,
    /// BOOKMARK events sent.
    pub bookmarks: u32,
    /// `ERROR` 410 events sent.
    pub expired: u32,
    /// Every ADDED/MODIFIED/DELETED delivered on a watch, as `TYPE namespace/name`.
    pub delivered: Vec<String>,
    /// Query strings of every request, in order.
    pub queries: Vec<String>,
    /// The decoded `labelSelector` of every request (`""` when absent), in order.
    pub label_selectors: Vec<String>,
}

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (rv, type, object) in RV order.
    events: Vec<(u64, &'static str, Value)>,
    /// Events at or below this RV are gone; a watch from an older RV gets 410.
    compacted: u64,
    partitioned: bool,
    /// Bumped by `expire`: open watches from an earlier epoch end with 410.
    expiry_epoch: u64,
    fail_lists: u32,
    stats: Stats,
}

#[derive(Default)]
struct State {
    rv: u64,
    services: Collection,
    slices: Collection,
    nodes: Collection,
    unknown: Vec<String>,
}

impl State {
    fn collection(&mut self, kind: Kind) -> &mut Collection {
        match kind {
            Kind::Service => &mut self.services,
            Kind::EndpointSlice => &mut self.slices,
            Kind::Node => &mut self.nodes,
        }
    }
}

/// A running fake API server; it stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Starts serving on a listener the caller bound (e.g. inside a test's network namespace).
    pub fn start_on(listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (changed, _) = watch::channel(0u64);
        let (st, ch) = (state.clone(), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, ch) = (st.clone(), ch.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, st.clone(), ch.clone()));
                    // Errors here are the client hanging up mid-watch: nothing to do.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            changed,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client pointed at this server.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Creates or replaces an object (kind from its `kind` field); returns the new RV.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = match object["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Node") => Kind::Node,
            other => {
                panic!("fake API server holds Services, EndpointSlices and Nodes, not {other:?}")
            }
        };
        let key = key_of(&object);
        let rv = {
            let mut state = self.lock();
            state.rv += 1;
            let rv = state.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let collection = state.collection(kind);
            let kind_of_event = if collection.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            collection.objects.insert(key, object.clone());
            collection.events.push((rv, kind_of_event, object));
            rv
        };
        self.notify();
        rv
    }

    /// Deletes an object; returns the RV of the deletion.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> u64 {
        let rv = {
            let mut state = self.lock();
            state.rv += 1;
            let rv = state.rv;
            let collection = state.collection(kind);
            let mut object = collection
                .objects
                .remove(&(namespace.to_owned(), name.to_owned()))
                .unwrap_or_else(|| panic!("no {kind:?} {namespace}/{name} to delete"));
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            collection.events.push((rv, "DELETED", object));
            rv
        };
        self.notify();
        rv
    }

    /// Stops delivering events of `kind` on open watches, as if the client were cut off.
    pub fn partition(&self, kind: Kind) {
        self.lock().collection(kind).partitioned = true;
        self.notify();
    }

    /// Compacts `kind`'s history to the current RV and ends every open watch on it with an
    /// `ERROR` 410 Expired event; lifts a partition.
    pub fn expire(&self, kind: Kind) {
        {
            let mut state = self.lock();
            let rv = state.rv;
            let collection = state.collection(kind);
            collection.compacted = rv;
            collection.events.clear();
            collection.expiry_epoch += 1;
            collection.partitioned = false;
        }
        self.notify();
    }

    /// Answers the next `n` LISTs of `kind` with 500 InternalError.
    pub fn fail_next_lists(&self, kind: Kind, n: u32) {
        self.lock().collection(kind).fail_lists = n;
    }

    /// What the server saw and sent for `kind`.
    pub fn stats(&self, kind: Kind) -> Stats {
        self.lock().collection(kind).stats.clone()
    }

    /// Requests for paths the fake does not serve (answered 404).
    pub fn unknown_requests(&self) -> Vec<String> {
        self.lock().unknown.clone()
    }

    /// Waits until `cond` holds for `kind`'s stats, or panics after `deadline` naming `what`.
    pub async fn until(
        &self,
        kind: Kind,
        what: &str,
        deadline: Duration,
        cond: impl Fn(&Stats) -> bool,
    ) {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if cond(&self.stats(kind)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "timed out waiting for {what}: {:?}",
                self.stats(kind)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"]
            .as_str()
            .expect("object has metadata.name")
            .to_owned(),
    )
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    let raw = req.uri().query().unwrap_or("");
    raw.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding for query strings (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `fieldSelector` terms: `metadata.name=NAME` (what lb asks for); any other field selects
/// nothing, so a selector the fake does not know shows up as a failing test.
fn selects_fields(selector: Option<&String>, object: &Value) -> bool {
    selector
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some(("metadata.name", name)) => object["metadata"]["name"].as_str() == Some(name),
            _ => false,
        })
}

/// `labelSelector` terms: `key`, `!key`, `key=value`, `key!=value`.
fn selects(selector: Option<&String>, object: &Value) -> bool {
    let labels = object["metadata"]["labels"].as_object();
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some(key) = term.strip_prefix('!') {
                label(key).is_none()
            } else if let Some((k, v)) = term.split_once("!=") {
                label(k) != Some(v)
            } else if let Some((k, v)) = term.split_once('=') {
                label(k.trim_end_matches('=')) == Some(v)
            } else {
                label(term).is_some()
            }
        })
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let Some(kind) = Kind::from_path(&path).filter(|_| req.method() == hyper::Method::GET) else {
        let line = format!("{} {}", req.method(), req.uri());
        eprintln!("fake API server: unknown request {line}");
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unknown
            .push(line);
        return Ok(full(
            StatusCode::NOT_FOUND,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ));
    };
    let query = query(&req);
    {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let stats = &mut state.collection(kind).stats;
        stats
            .queries
            .push(req.uri().query().unwrap_or("").to_owned());
        stats
            .label_selectors
            .push(query.get("labelSelector").cloned().unwrap_or_default());
    }
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        Ok(watch_response(kind, &query, state, changed))
    } else {
        Ok(list_response(kind, &query, &state))
    }
}

fn list_response(
    kind: Kind,
    query: &BTreeMap<String, String>,
    state: &Mutex<State>,
) -> Response<Body> {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let rv = state.rv;
    let collection = state.collection(kind);
    if collection.fail_lists > 0 {
        collection.fail_lists -= 1;
        collection.stats.failed_lists += 1;
        return full(
            StatusCode::INTERNAL_SERVER_ERROR,
            status(500, "InternalError", "etcdserver: leader changed"),
        );
    }
    collection.stats.lists += 1;
    let selector = query.get("labelSelector");
    let fields = query.get("fieldSelector");
    let matching: Vec<Value> = collection
        .objects
        .values()
        .filter(|o| selects(selector, o) && selects_fields(fields, o))
        .map(|o| {
            // Items of a typed list carry no kind/apiVersion, as the apiserver prints them.
            let mut item = o.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    let offset: usize = query
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = offset.saturating_add(limit).min(matching.len());
    let page = matching.get(offset..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < matching.len() {
        metadata["continue"] = json!(end.to_string());
    }
    let (api_version, kind_name) = kind.type_meta();
    full(
        StatusCode::OK,
        json!({"kind": format!("{kind_name}List"), "apiVersion": api_version, "metadata": metadata, "items": page}),
    )
}

fn watch_response(
    kind: Kind,
    query: &BTreeMap<String, String>,
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
) -> Response<Body> {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let selector = query.get("labelSelector").cloned();
    let fields = query.get("fieldSelector").cloned();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let mut wake = changed.subscribe();
    tokio::spawn(async move {
        let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
        let (api_version, kind_name) = kind.type_meta();
        let epoch = {
            let mut s = lock();
            let c = s.collection(kind);
            c.stats.watches += 1;
            c.stats.open_watches += 1;
            c.expiry_epoch
        };
        let mut sent_rv = from;
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            // Collect what to send under the lock, then send without it.
            let (lines, done) = {
                let mut s = lock();
                let rv = s.rv;
                let c = s.collection(kind);
                let mut lines = Vec::new();
                let mut done = false;
                if sent_rv < c.compacted || c.expiry_epoch != epoch {
                    let message = format!("too old resource version: {sent_rv} ({})", c.compacted);
                    lines
                        .push(json!({"type": "ERROR", "object": status(410, "Expired", &message)}));
                    c.stats.expired += 1;
                    done = true;
                } else if !c.partitioned {
                    let after = sent_rv;
                    for (_, event_type, object) in c.events.iter().filter(|(r, ..)| *r > after) {
                        if selects(selector.as_ref(), object)
                            && selects_fields(fields.as_ref(), object)
                        {
                            let (ns, name) = key_of(object);
                            c.stats.delivered.push(format!("{event_type} {ns}/{name}"));
                            lines.push(json!({"type": event_type, "object": object}));
                        }
                    }
                    // Nothing more to send: the client is now as current as the server.
                    sent_rv = sent_rv.max(rv);
                }
                (lines, done)
            };
            for line in lines {
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("{line}\n")))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if done || tx.is_closed() {
                break;
            }
            tokio::select! {
                r = wake.changed() => if r.is_err() { break },
                _ = ticker.tick() => {
                    let partitioned = lock().collection(kind).partitioned;
                    if bookmarks && !partitioned {
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "kind": kind_name, "apiVersion": api_version,
                            "metadata": {"resourceVersion": sent_rv.to_string()}}});
                        if tx.send(Ok(Frame::data(Bytes::from(format!("{bookmark}\n"))))).await.is_err() {
                            break;
                        }
                        lock().collection(kind).stats.bookmarks += 1;
                    }
                }
                () = tx.closed() => break,
            }
        }
        lock().collection(kind).stats.open_watches -= 1;
    });
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (f, rx))
    }));
    let mut response = Response::new(BodyExt::boxed(body));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}
