//! Waiting on a condition with a deadline: the lab never sleeps for a fixed time.
use std::thread;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Interval between two polls.
const POLL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Ok(Some(value))`, or fails with [`Error::Timeout`] after
/// `timeout`. `check` returns `Ok(None)` to try again, or `Err(observation)` with a text that
/// says what it saw, which the timeout error reports. Lab errors inside `check` are observations
/// too: a command that fails now may succeed on the next poll.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> std::result::Result<Option<T>, String>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing yet");
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(seen) => last = seen,
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
                last,
            });
        }
        thread::sleep(POLL);
    }
}
