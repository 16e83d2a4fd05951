//! The only way to drop a packet. Handlers return `Result<Verdict, Dropped>`; `settle` turns the
//! result into the TC return code and, for a drop, counts it in `LB_METRICS` and sends a
//! `DropEvent` to `LB_EVENTS`, rate-limited per CPU by the token bucket in `LB_EVENT_LIMIT`
//! (refilled at `DatapathConfig::events_per_sec`).
//!
//! Maps: `LB_METRICS`, `LB_EVENTS`, `LB_EVENT_LIMIT` (and reads `LB_CONFIG`).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use lb_common::{
    drop::{DropReason, Hook, SourceFile},
    event::{DropEvent, EVENT_DROP},
    metrics::{MetricKey, MetricValue},
};

use crate::{
    maps::{LB_EVENT_LIMIT, LB_EVENTS, LB_METRICS, config},
    parse::{Shape, Tuple4},
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// What to do with a packet that is not dropped.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Hand the packet on (to the next TCX program, then the stack), translated or not.
    /// `TC_ACT_UNSPEC` rather than `TC_ACT_OK`: under TCX `OK` would end the chain and skip
    /// another CNI's programs on the same hook.
    Pass,
    /// The packet was redirected; the value is `bpf_redirect*`'s return code.
    Redirect(i32),
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

/// `Dropped` for `$reason`, at the calling module's `FILE` and line.
macro_rules! drop {
    ($reason:expr) => {
        $crate::drop::Dropped {
            reason: $reason,
            file: FILE,
            line: line!() as u16,
        }
    };
}
pub(crate) use drop;

/// The token bucket of `LB_EVENT_LIMIT` (private to the datapath).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventLimit {
    /// Events that may still be sent.
    pub tokens: u64,
    /// When the bucket was last refilled.
    pub last_ns: u64,
}

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
        Err(dropped) => {
            count(ctx, hook, dropped.reason);
            if take_token() {
                send_event(ctx, hook, arrived, &dropped);
            }
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn count(ctx: &TcContext, hook: Hook, reason: DropReason) {
    let key = MetricKey {
        reason: reason as u8,
        hook: hook as u8,
        _pad: [0; 2],
    };
    let bytes = u64::from(ctx.len());
    if let Some(value) = LB_METRICS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value, written only by this CPU, and BPF programs do not
        // preempt each other on one CPU.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += bytes;
        }
        return;
    }
    let first = MetricValue { packets: 1, bytes };
    // A failure means the map is full: the drop is still enforced, only not counted.
    let _ = LB_METRICS.insert(key, first, u64::from(BPF_NOEXIST));
}

#[inline(always)]
fn take_token() -> bool {
    let rate = u64::from(config().events_per_sec);
    if rate == 0 {
        return false;
    }
    let Some(bucket) = LB_EVENT_LIMIT.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, see `count`.
    let bucket = unsafe { &mut *bucket };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Cap the elapsed time at a second, so the product cannot overflow and the burst is at
    // most one second's worth of events.
    let elapsed = now.saturating_sub(bucket.last_ns).min(NS_PER_SEC);
    let refill = elapsed * rate / NS_PER_SEC;
    if refill > 0 {
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.last_ns = now;
    }
    if bucket.tokens == 0 {
        return false;
    }
    bucket.tokens -= 1;
    true
}

#[inline(always)]
fn send_event(ctx: &TcContext, hook: Hook, arrived: Option<&Tuple4>, dropped: &Dropped) {
    let Some(mut slot) = LB_EVENTS.reserve::<DropEvent>(0) else {
        return;
    };
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the whole run.
    let (ifindex, flow_hash) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).hash) };
    let mut event = DropEvent {
        kind: EVENT_DROP,
        reason: dropped.reason as u8,
        file: dropped.file as u8,
        hook: hook as u8,
        line: dropped.line,
        ifindex,
        flow_hash,
        len: ctx.len(),
        ..DropEvent::default()
    };
    if let Some(tuple) = arrived {
        event.proto = tuple.proto;
        event.saddr = tuple.saddr;
        event.daddr = tuple.daddr;
        if tuple.shape == Shape::Complete {
            event.sport = tuple.sport;
            event.dport = tuple.dport;
            event.tcp_flags = tuple.tcp_flags;
        }
    }
    slot.write(event);
    slot.submit(0);
}
