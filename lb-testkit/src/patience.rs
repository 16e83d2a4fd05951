//! How long tests wait, one constant per kind of wait, so that a slow machine is met in one
//! place rather than in numbers scattered through the tests.
//!
//! A loaded 2-core CI machine can leave a process (a test server in Python, curl, the agent)
//! unscheduled for seconds. Waits for something that should happen return as soon as it does,
//! so they are generous: they cost nothing when things work. Waits that conclude something did
//! *not* happen (a drop, a closed port) cost their whole length every time, so they are short;
//! a slow machine can only make such a check pass, never fail, and the same test shows with a
//! positive control (under [`ANSWER_WITHIN`]) that the path works at all.
use std::time::Duration;

/// How long a request that should succeed may take, connection and answer together: curl's
/// `--max-time`, a socket's connect, read and write timeouts.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// [`ANSWER_WITHIN`] in whole seconds, as curl's `--max-time` takes it.
pub const ANSWER_WITHIN_SECS: &str = "20";

/// How long a check waits before it concludes that nothing will answer (a dropped packet, a
/// port nobody serves). Longer than one SYN retransmission (1 s), so a dropped SYN is seen
/// twice.
pub const SILENCE: Duration = Duration::from_secs(2);

/// [`SILENCE`] in whole seconds, as curl's `--max-time` takes it.
pub const SILENCE_SECS: &str = "2";

/// How long a condition that normally holds within milliseconds may take to hold: a map
/// written, a counter bumped, a file change seen by the agent, a log line printed.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curl_arguments_say_the_same_as_the_durations() {
        assert_eq!(ANSWER_WITHIN_SECS.parse(), Ok(ANSWER_WITHIN.as_secs()));
        assert_eq!(SILENCE_SECS.parse(), Ok(SILENCE.as_secs()));
    }
}
