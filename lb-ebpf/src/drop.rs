//! The only way to drop a packet. Handlers return `Result<Verdict, Dropped>`, where a
//! `Dropped` (built with [`dropped!`]) carries a reason and its drop site; `settle` turns the
//! result into the TC return code and hands a drop to `metrics.rs` (the counter) and
//! `events.rs` (the event).
//!
//! Touches no map itself.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use lb_common::drop::{DropReason, Hook, SourceFile};

use crate::{events, metrics, parse::Tuple4, parse6::Tuple6};

/// What to do with a packet that is not dropped.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Hand the packet on (to the next TCX program, then the stack), translated or not.
    /// `TC_ACT_UNSPEC` rather than `TC_ACT_OK`: under TCX `OK` would end the chain and skip
    /// another CNI's programs on the same hook.
    Pass,
    /// The packet was redirected; the value is `bpf_redirect*`'s return code.
    Redirect(i32),
    /// The packet was dropped, and turned into an answer to its sender (ICMP "fragmentation
    /// needed") that was redirected with `code`: the drop is counted and reported all the same,
    /// with the length the packet had before it became the answer.
    Answered {
        /// `bpf_redirect`'s return code.
        code: i32,
        /// The drop the answer stands for.
        dropped: Dropped,
        /// The dropped packet's length.
        len: u32,
    },
}

/// A drop: its reason and the source line that decided it.
#[derive(Clone, Copy)]
pub struct Dropped {
    /// Why.
    pub reason: DropReason,
    /// Which eBPF source file.
    pub file: SourceFile,
    /// Which line.
    pub line: u16,
}

/// `Dropped` for `$reason`, at the calling module's `FILE` and line. Named so that it does not
/// shadow `core::mem::drop`.
macro_rules! dropped {
    ($reason:expr) => {
        $crate::drop::Dropped {
            reason: $reason,
            file: FILE,
            line: line!() as u16,
        }
    };
}
pub(crate) use dropped;

/// The TC return code for `result`, after counting and reporting a drop. `arrived` is the
/// packet as it arrived, for the event: by the time of a late drop (e.g. no route after NAT)
/// the packet itself has been rewritten.
#[inline(always)]
pub fn settle(
    ctx: &TcContext,
    hook: Hook,
    arrived: Option<&Tuple4>,
    result: Result<Verdict, Dropped>,
) -> i32 {
    match result {
        Ok(Verdict::Pass) => TC_ACT_UNSPEC,
        Ok(Verdict::Redirect(code)) => code,
        Ok(Verdict::Answered { code, dropped, len }) => {
            count(ctx, hook, arrived, len, dropped);
            code
        }
        Err(dropped) => {
            count(ctx, hook, arrived, ctx.len(), dropped);
            TC_ACT_SHOT
        }
    }
}

/// Counts and reports `dropped`, a packet of `len` bytes.
#[inline(always)]
fn count(ctx: &TcContext, hook: Hook, arrived: Option<&Tuple4>, len: u32, dropped: Dropped) {
    metrics::count_drop(len, hook, dropped.reason);
    let site = events::Site {
        file: dropped.file,
        line: dropped.line,
    };
    events::report_drop(ctx, hook, arrived, len, dropped.reason, site);
}

/// The packet's length, read so that LLVM cannot merge the read with that of an `Answered`
/// verdict's `len` (a verdict returned from a subprogram lives on the stack) into one load
/// from either pointer, which the verifier refuses.
#[inline(always)]
fn skb_len(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole run.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.skb.skb).len) }
}

/// [`settle`] for an IPv6 packet: the drop is reported as a `DropEvent6`.
#[inline(always)]
pub fn settle6(
    ctx: &TcContext,
    hook: Hook,
    arrived: Option<&Tuple6>,
    result: Result<Verdict, Dropped>,
) -> i32 {
    let (code, len, dropped) = match result {
        Ok(Verdict::Pass) => return TC_ACT_UNSPEC,
        Ok(Verdict::Redirect(code)) => return code,
        Ok(Verdict::Answered { code, dropped, len }) => (code, len, dropped),
        Err(dropped) => (TC_ACT_SHOT, skb_len(ctx), dropped),
    };
    metrics::count_drop(len, hook, dropped.reason);
    let site = events::Site {
        file: dropped.file,
        line: dropped.line,
    };
    events::report_drop6(ctx, hook, arrived, len, dropped.reason, site);
    code
}
