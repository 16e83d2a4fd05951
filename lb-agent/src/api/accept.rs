//! The accept loop of the unix-socket API (`server.rs`): accept until shutdown, one task per
//! connection, back off on accept errors. What a connection says is the caller's business.
//! (The HTTP endpoint in `http.rs` has its own, capped loop.)

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A listener the loop can accept from (tokio's listeners share no trait).
pub trait Listener: Send {
    /// One accepted connection.
    type Stream: Send + 'static;
    /// The next connection.
    fn accept_stream(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept_stream(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled and runs `handle` on each in
/// its own task; open connections (including long-lived monitor streams) end with `shutdown`.
/// `what` names the endpoint in logs (`api`, `http`).
pub async fn serve<L, F, Fut>(
    listener: L,
    what: &'static str,
    shutdown: CancellationToken,
    handle: F,
) where
    L: Listener,
    F: Fn(L::Stream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept_stream() => accepted,
        };
        match accepted {
            Ok(stream) => {
                let connection = handle(stream);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        result = connection => {
                            if let Err(err) = result {
                                debug!(error = %err, "{what} connection ended");
                            }
                        }
                    }
                });
            }
            Err(err) => {
                // E.g. EMFILE: back off instead of spinning; the next accept may succeed.
                warn!(error = %err, "cannot accept {what} connection");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}
