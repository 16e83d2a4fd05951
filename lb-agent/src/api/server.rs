//! The agent side of the `lbctl` API: a unix socket speaking newline-delimited JSON
//! (`proto.rs`). The agent's state comes from an [`ApiBackend`]; this module owns only the
//! socket, the framing, who may do what, and validating `config set` before the backend sees it.
//!
//! # Who may do what
//!
//! The socket is created with mode 0660 (by the umask in force at `bind`, so it is never
//! reachable by others, not even for an instant): its owner and group may connect. Reading
//! (`status`, `service list`, `config view`, `monitor`) is open to whoever connects; a request
//! that changes state (`config set`) is refused unless the peer's credentials, as the kernel
//! reports them (`SO_PEERCRED`), are uid 0 or the agent's own uid.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::proto::{
    ConfigEntry, CtRow, DropEventRecord, LbRow, MetricsSnapshot, Request, Response, ServiceRow,
    StatusReply,
};
use crate::config::{self, LiveChange};
use crate::telemetry::error_chain;

/// An error a backend reports; shown to the operator with its sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the API needs from the agent. Every method but `config_set` returns a snapshot of
/// state the agent already holds, so none of them blocks.
pub trait ApiBackend: Send + Sync + 'static {
    /// Readiness and a summary.
    fn status(&self) -> StatusReply;
    /// Every programmed service with its backends (any order; the server sorts by id).
    fn services(&self) -> Vec<ServiceRow>;
    /// Every option, its current value and its source (`config::entries`), sorted by key.
    fn config_view(&self) -> Vec<ConfigEntry>;
    /// Applies an already validated change at once (e.g. rewrites `LB_CONFIG`) and persists
    /// it (the config-dir file or the ConfigMap); resolves once both are done, with what was
    /// done in words for the operator.
    fn config_set(&self, change: LiveChange) -> BoxFuture<'static, Result<String, BoxError>>;
    /// A subscription to drop events (`monitor::DropFanout::subscribe`).
    fn subscribe_drops(&self) -> broadcast::Receiver<DropEventRecord>;
    /// Counters and gauges for `/metrics`.
    fn metrics(&self) -> MetricsSnapshot;
    /// Every entry of the services map, by frontend then slot, or why it cannot be read.
    fn lb_entries(&self) -> Result<Vec<LbRow>, String> {
        Err("this agent has no services map".to_owned())
    }
    /// Every conntrack entry (any order; the server sorts), or why they cannot be read.
    fn conntrack(&self) -> Result<Vec<CtRow>, String> {
        Err("this agent has no conntrack maps".to_owned())
    }
}

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket's directory cannot be created.
    #[error("cannot create directory `{path}` for the api socket")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process answers on the socket.
    #[error("another lb-agent is serving `{path}`; stop it or choose another --socket")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("`{path}` exists and is not a socket; remove it or choose another --socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket cannot be removed.
    #[error("cannot remove stale api socket `{path}`")]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Binding failed.
    #[error("cannot listen on api socket `{path}`")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The umask in force while the socket is bound: mode 0660, owner and group only.
const SOCKET_UMASK: libc::mode_t = 0o117;

/// Binds the API socket: creates its directory, removes a stale socket left by a previous
/// agent (refusing if one still answers), and creates it with mode 0660 (see the module's
/// doc). Must be called inside a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| Error::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(Error::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(_) => {}
    }
    // The socket file takes its mode from the umask at bind(2); a chmod afterwards would leave
    // a window in which anyone may connect. The umask is process-wide: the agent binds before
    // it starts any thread that creates files.
    // SAFETY: umask(2) only swaps the process's file-mode mask; it cannot fail.
    let previous = unsafe { libc::umask(SOCKET_UMASK) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(previous) };
    bound.map_err(|source| Error::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Whether a peer with `uid` may change the agent's state: root, or the agent's own user.
pub fn may_change_state(uid: u32) -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let own = unsafe { libc::geteuid() };
    uid == 0 || uid == own
}

/// Serves the API on `path` until `shutdown` is cancelled, then removes the socket.
pub async fn serve(
    path: &Path,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = bind(path)?;
    serve_listener(listener, backend, shutdown).await;
    if let Err(err) = std::fs::remove_file(path) {
        debug!(path = %path.display(), error = %err, "cannot remove api socket");
    }
    Ok(())
}

/// Serves the API on a bound listener until `shutdown` is cancelled; open connections
/// (including monitor streams) end with it.
pub async fn serve_listener(
    listener: UnixListener,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
) {
    super::accept::serve(listener, "api", shutdown, move |stream| {
        handle(stream, Arc::clone(&backend))
    })
    .await;
}

/// Longest request line accepted; real requests are under 200 bytes.
const MAX_REQUEST: usize = 64 * 1024;

async fn handle(stream: UnixStream, backend: Arc<dyn ApiBackend>) -> io::Result<()> {
    // The credentials of the process that connected, fixed by the kernel at connect(2).
    let peer_uid = stream.peer_cred().ok().map(|cred| cred.uid());
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > MAX_REQUEST {
            let message = format!("request longer than {MAX_REQUEST} bytes");
            return write_line(&mut write, &Response::Error { message }).await;
        }
        let request = match serde_json::from_str::<Request>(&line) {
            Ok(request) => request,
            Err(err) => {
                let message = format!("malformed request: {err}");
                write_line(&mut write, &Response::Error { message }).await?;
                continue;
            }
        };
        if request == Request::MonitorDrops {
            return stream_drops(lines, write, backend.subscribe_drops()).await;
        }
        let response = match refusal(&request, peer_uid) {
            Some(message) => Response::Error { message },
            None => respond(backend.as_ref(), request).await,
        };
        write_line(&mut write, &response).await?;
    }
    Ok(())
}

/// Why `request` from a peer with `uid` (`None`: unknown) is refused, or `None` if it may run.
pub fn refusal(request: &Request, uid: Option<u32>) -> Option<String> {
    let Request::ConfigSet { key, .. } = request else {
        return None;
    };
    match uid {
        Some(uid) if may_change_state(uid) => None,
        Some(uid) => Some(format!(
            "permission denied: `config set {key}` changes lb-agent's state and needs root or \
             the agent's user (uid {}); you are uid {uid}. Reading (status, service list, \
             config view, monitor) needs no privilege",
            // SAFETY: geteuid(2) cannot fail and touches no memory.
            unsafe { libc::geteuid() }
        )),
        None => Some(format!(
            "permission denied: `config set {key}` needs root or the agent's user, and the \
             peer's credentials cannot be read"
        )),
    }
}

/// The answer to one request other than `MonitorDrops`.
pub async fn respond(backend: &dyn ApiBackend, request: Request) -> Response {
    match request {
        Request::Status => Response::Status(Box::new(backend.status())),
        Request::ServiceList => {
            let mut services = backend.services();
            services.sort_by_key(|service| service.id);
            Response::ServiceList { services }
        }
        Request::ConfigView => {
            let entries = backend.config_view();
            Response::ConfigView {
                options: entries
                    .iter()
                    .map(|entry| (entry.key.clone(), entry.value.clone()))
                    .collect(),
                entries,
            }
        }
        Request::ConfigSet { key, value } => match config::parse_live(&key, &value) {
            Err(err) => Response::Error {
                message: err.to_string(),
            },
            Ok(change) => match backend.config_set(change).await {
                Ok(outcome) => Response::ConfigSet {
                    key: change.key().to_owned(),
                    value: change.value(),
                    outcome,
                },
                Err(err) => Response::Error {
                    message: format!(
                        "cannot set `{}`: {}",
                        change.key(),
                        error_chain(err.as_ref())
                    ),
                },
            },
        },
        Request::LbList => match backend.lb_entries() {
            Ok(entries) => Response::LbList { entries },
            Err(message) => Response::Error {
                message: format!("cannot list the services map: {message}"),
            },
        },
        Request::CtList => match backend.conntrack() {
            Ok(mut entries) => {
                entries.sort_by(|a, b| {
                    (&a.map, &a.proto, &a.source, &a.destination).cmp(&(
                        &b.map,
                        &b.proto,
                        &b.source,
                        &b.destination,
                    ))
                });
                Response::CtList { entries }
            }
            Err(message) => Response::Error {
                message: format!("cannot list conntrack entries: {message}"),
            },
        },
        Request::MonitorDrops => Response::Error {
            message: "monitor requests are streamed, not answered".to_owned(),
        },
    }
}

static LOST_EVENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Drop events `lbctl monitor` clients lost because they read too slowly, since start.
pub fn lost_events_total() -> u64 {
    LOST_EVENTS.load(std::sync::atomic::Ordering::Relaxed)
}

async fn stream_drops(
    mut lines: Lines<BufReader<OwnedReadHalf>>,
    mut write: OwnedWriteHalf,
    mut drops: broadcast::Receiver<DropEventRecord>,
) -> io::Result<()> {
    loop {
        tokio::select! {
            event = drops.recv() => {
                let response = match event {
                    Ok(record) => Response::Drop(record),
                    Err(broadcast::error::RecvError::Lagged(count)) => {
                        LOST_EVENTS.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                        Response::Lost { count }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                write_line(&mut write, &response).await?;
            }
            // The client sends nothing more; EOF or an error means it is gone.
            line = lines.next_line() => {
                if !matches!(line, Ok(Some(_))) {
                    return Ok(());
                }
            }
        }
    }
}

async fn write_line(write: &mut OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}
