//! `lbctl monitor --type drop [-o json]`: prints drop events as they arrive, one line each,
//! flushed per line so `| grep` sees them at once, until interrupted.

use std::io::Write;

use super::Error;
use super::output::Format;
use crate::api::client::{Client, Error as ClientError};
use crate::api::proto::Response;
use crate::monitor::line;

/// Streams drop events from `client` to `out` until the agent or the reader goes away.
pub fn drops(client: Client, format: Option<Format>, out: &mut dyn Write) -> Result<(), Error> {
    let mut stream = client.monitor_drops()?;
    loop {
        match stream.recv()? {
            Some(Response::Drop(event)) => {
                let text = match format {
                    Some(Format::Json) => line::json(&event),
                    None => line::text(&event),
                };
                writeln!(out, "{text}").map_err(Error::Stdout)?;
                out.flush().map_err(Error::Stdout)?;
            }
            Some(Response::Lost { count }) => {
                eprintln!("lbctl: lost {count} drop events (lbctl read too slowly)");
            }
            Some(_) => {
                return Err(ClientError::Unexpected { request: "monitor" }.into());
            }
            None => return Err(Error::StreamEnded),
        }
    }
}
