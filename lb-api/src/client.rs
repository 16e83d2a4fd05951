//! The `lbctl` side of the API: a blocking client over the unix socket (lbctl makes one
//! request and exits, so it needs no async runtime).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{ConfigEntry, CtRow, LbRow, Request, Response, ServiceRow, StatusReply};

/// How long a request may wait for its answer (monitor streams wait forever).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers on the socket.
    #[error("cannot connect to lb-agent at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection failed mid-request.
    #[error("lost connection to lb-agent at {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The agent closed the connection without answering.
    #[error("lb-agent at {path} closed the connection")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// An answer that is not a `Response`.
    #[error("malformed answer from lb-agent: {line}")]
    Malformed {
        /// The line received.
        line: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The agent refused the request.
    #[error("{message}")]
    Agent {
        /// The agent's message.
        message: String,
    },
    /// An answer of the wrong kind.
    #[error("unexpected answer from lb-agent to {request}")]
    Unexpected {
        /// The request sent.
        request: &'static str,
    },
}

/// A connection to lb-agent.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the agent's socket.
    pub fn connect(path: &Path) -> Result<Self, Error> {
        let connect_err = |source| Error::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        let writer = stream.try_clone().map_err(connect_err)?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn io_err(&self, source: io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn send(&mut self, request: &Request) -> Result<(), Error> {
        let mut line = serde_json::to_vec(request).map_err(|err| self.io_err(err.into()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|source| self.io_err(source))
    }

    /// The next response line; `None` at EOF.
    fn receive(&mut self) -> Result<Option<Response>, Error> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .map_err(|source| self.io_err(source))?;
        if read == 0 {
            return Ok(None);
        }
        serde_json::from_str(line.trim_end())
            .map(Some)
            .map_err(|source| Error::Malformed {
                line: line.trim_end().to_owned(),
                source,
            })
    }

    /// Sends one request and reads its answer; an agent error becomes [`Error::Agent`].
    pub fn call(&mut self, request: &Request) -> Result<Response, Error> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|source| self.io_err(source))?;
        self.send(request)?;
        match self.receive()? {
            None => Err(Error::Closed {
                path: self.path.clone(),
            }),
            Some(Response::Error { message }) => Err(Error::Agent { message }),
            Some(response) => Ok(response),
        }
    }

    /// The agent's status.
    pub fn status(&mut self) -> Result<StatusReply, Error> {
        match self.call(&Request::Status)? {
            Response::Status(status) => Ok(*status),
            _ => Err(Error::Unexpected { request: "status" }),
        }
    }

    /// Every service, sorted by id.
    pub fn services(&mut self) -> Result<Vec<ServiceRow>, Error> {
        match self.call(&Request::ServiceList)? {
            Response::ServiceList { services } => Ok(services),
            _ => Err(Error::Unexpected {
                request: "service list",
            }),
        }
    }

    /// Every option, its value and where the value comes from, sorted by key (an older agent
    /// sends no sources: they are empty then).
    pub fn config_view(&mut self) -> Result<Vec<ConfigEntry>, Error> {
        match self.call(&Request::ConfigView)? {
            Response::ConfigView { entries, .. } if !entries.is_empty() => Ok(entries),
            Response::ConfigView { options, .. } => Ok(options
                .into_iter()
                .map(|(key, value)| ConfigEntry {
                    key,
                    value,
                    ..ConfigEntry::default()
                })
                .collect()),
            _ => Err(Error::Unexpected {
                request: "config view",
            }),
        }
    }

    /// Changes a live option; returns what the agent did (applied, persisted where).
    pub fn config_set(&mut self, key: &str, value: &str) -> Result<String, Error> {
        let request = Request::ConfigSet {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        match self.call(&request)? {
            Response::ConfigSet { outcome, .. } => Ok(outcome),
            _ => Err(Error::Unexpected {
                request: "config set",
            }),
        }
    }

    /// Every entry of the services map.
    pub fn lb_list(&mut self) -> Result<Vec<LbRow>, Error> {
        match self.call(&Request::LbList)? {
            Response::LbList { entries } => Ok(entries),
            _ => Err(Error::Unexpected {
                request: "bpf lb list",
            }),
        }
    }

    /// Every conntrack entry.
    pub fn ct_list(&mut self) -> Result<Vec<CtRow>, Error> {
        match self.call(&Request::CtList)? {
            Response::CtList { entries } => Ok(entries),
            _ => Err(Error::Unexpected {
                request: "bpf ct list",
            }),
        }
    }

    /// Starts a drop-event stream; read it with [`DropStream::recv`].
    pub fn monitor_drops(mut self) -> Result<DropStream, Error> {
        self.reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|source| self.io_err(source))?;
        self.send(&Request::MonitorDrops)?;
        Ok(DropStream { client: self })
    }
}

/// A stream of [`Response::Drop`] and [`Response::Lost`] answers.
#[derive(Debug)]
pub struct DropStream {
    client: Client,
}

impl DropStream {
    /// The next event; `None` when the agent ends the stream.
    pub fn recv(&mut self) -> Result<Option<Response>, Error> {
        match self.client.receive()? {
            Some(Response::Error { message }) => Err(Error::Agent { message }),
            other => Ok(other),
        }
    }
}
