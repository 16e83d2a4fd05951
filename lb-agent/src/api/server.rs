//! The agent side of the `lbctl` API: a unix socket (mode 0600) speaking newline-delimited
//! JSON (`proto.rs`). The agent's state comes from an [`ApiBackend`]; this module owns only
//! the socket, the framing, and validating `config set` before the backend sees it.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
    CtRow, DropEventRecord, MetricsSnapshot, Request, Response, ServiceRow, StatusReply,
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
    /// Every option and its current value (`config::view` of the live configuration).
    fn config_view(&self) -> BTreeMap<String, String>;
    /// Applies an already validated change at once (e.g. rewrites `LB_CONFIG`) and persists
    /// it (the config-dir file or the ConfigMap); resolves once both are done.
    fn config_set(&self, change: LiveChange) -> BoxFuture<'static, Result<(), BoxError>>;
    /// A subscription to drop events (`monitor::DropFanout::subscribe`).
    fn subscribe_drops(&self) -> broadcast::Receiver<DropEventRecord>;
    /// Counters and gauges for `/metrics`.
    fn metrics(&self) -> MetricsSnapshot;
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
    /// The socket's mode cannot be set.
    #[error("cannot set mode 0600 on api socket `{path}`")]
    Chmod {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds the API socket: creates its directory, removes a stale socket left by a previous
/// agent (refusing if one still answers), and restricts it to its owner (mode 0600).
/// Must be called inside a tokio runtime.
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
    let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.to_owned(),
        source,
    })?;
    // Between bind and chmod the socket has the umask's mode; connecting needs write
    // permission on it, and the default umask (022) grants that to nobody but root.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        Error::Chmod {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
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
        let response = respond(backend.as_ref(), request).await;
        write_line(&mut write, &response).await?;
    }
    Ok(())
}

/// The answer to one request other than `MonitorDrops`.
pub async fn respond(backend: &dyn ApiBackend, request: Request) -> Response {
    match request {
        Request::Status => Response::Status(backend.status()),
        Request::ServiceList => {
            let mut services = backend.services();
            services.sort_by_key(|service| service.id);
            Response::ServiceList { services }
        }
        Request::ConfigView => Response::ConfigView {
            options: backend.config_view().into_iter().collect(),
        },
        Request::ConfigSet { key, value } => match config::parse_live(&key, &value) {
            Err(err) => Response::Error {
                message: err.to_string(),
            },
            Ok(change) => match backend.config_set(change).await {
                Ok(()) => Response::ConfigSet {
                    key: change.key().to_owned(),
                    value: change.value(),
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
                    Err(broadcast::error::RecvError::Lagged(count)) => Response::Lost { count },
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
