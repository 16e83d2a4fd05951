//! HTTP probes with the suite's patience (`lb_testkit::patience`). `lb_lab::probe`'s curl gives
//! up after 3 s, what a person at the lab waits for a drop; a test's request that must succeed
//! gets `ANSWER_WITHIN` instead, and one that must go unanswered gets `SILENCE`.
use std::net::SocketAddrV4;

use lb_lab::probe::HttpReply;
use lb_testkit::patience::{ANSWER_WITHIN_SECS, SILENCE_SECS};
use lb_testkit::{Netns, Outcome, Result};

/// `curl -i http://TARGET/` inside `ns` for a request that should be answered: waits up to
/// [`ANSWER_WITHIN`](lb_testkit::patience::ANSWER_WITHIN). Returns the outcome (to print) and
/// the parsed answer (status `None` when nothing came back).
pub fn http_get(ns: &Netns, target: SocketAddrV4) -> Result<(Outcome, HttpReply)> {
    curl(ns, &format!("http://{target}/"), ANSWER_WITHIN_SECS)
}

/// [`http_get`] for a request that should go unanswered (dropped, or nothing listening): gives
/// up after [`SILENCE`](lb_testkit::patience::SILENCE).
pub fn http_get_unanswered(ns: &Netns, target: SocketAddrV4) -> Result<(Outcome, HttpReply)> {
    curl(ns, &format!("http://{target}/"), SILENCE_SECS)
}

/// `curl -sSi --max-time MAX_TIME URL` inside `ns`.
fn curl(ns: &Netns, url: &str, max_time: &str) -> Result<(Outcome, HttpReply)> {
    let outcome = ns.exec("curl", &["-sSi", "--max-time", max_time, url])?;
    let reply = HttpReply::parse(&outcome.stdout);
    Ok((outcome, reply))
}
