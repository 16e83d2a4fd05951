//! Drop events for `lbctl monitor`: a `DropEvent` to `LB_EVENTS`, rate-limited per CPU by the
//! token bucket in `LB_EVENT_LIMIT` (refilled at `DatapathConfig::events_per_sec`).
//!
//! Maps: `LB_EVENTS`, `LB_EVENT_LIMIT` (the only module that touches them; reads `LB_CONFIG`
//! through `maps::config`). Called by `drop::settle` only.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use lb_common::{
    drop::{DropReason, Hook, SourceFile},
    event::{DropEvent, DropEvent6, EVENT_DROP, EVENT_DROP6},
};

use crate::{
    maps::{LB_EVENT_LIMIT, LB_EVENTS, config},
    parse::{Shape, Tuple4},
    parse6::Tuple6,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// Where a drop was decided: the event's `file` and `line`.
#[derive(Clone, Copy)]
pub struct Site {
    /// The eBPF source file.
    pub file: SourceFile,
    /// The line in it.
    pub line: u16,
}

/// Sends an event for a drop for `reason` at `site` if the bucket has a token left. `arrived`
/// is the packet as it arrived (see `drop::settle`), `len` its length.
#[inline(always)]
pub fn report_drop(
    ctx: &TcContext,
    hook: Hook,
    arrived: Option<&Tuple4>,
    len: u32,
    reason: DropReason,
    site: Site,
) {
    if take_token() {
        send(ctx, hook, arrived, len, reason, site);
    }
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
    // SAFETY: a per-CPU value, written only by this CPU, and BPF programs do not preempt each
    // other on one CPU.
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
fn send(
    ctx: &TcContext,
    hook: Hook,
    arrived: Option<&Tuple4>,
    len: u32,
    reason: DropReason,
    site: Site,
) {
    let Some(mut slot) = LB_EVENTS.reserve::<DropEvent>(0) else {
        return;
    };
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the whole run.
    let (ifindex, flow_hash) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).hash) };
    let mut event = DropEvent {
        kind: EVENT_DROP,
        reason: reason as u8,
        file: site.file as u8,
        hook: hook as u8,
        line: site.line,
        ifindex,
        flow_hash,
        len,
        ..DropEvent::default()
    };
    if let Some(tuple) = arrived {
        event.proto = tuple.proto;
        event.saddr = tuple.saddr;
        event.daddr = tuple.daddr;
        if matches!(tuple.shape, Shape::Complete | Shape::FirstFragment) {
            event.sport = tuple.sport;
            event.dport = tuple.dport;
            event.tcp_flags = tuple.tcp_flags;
        }
    }
    slot.write(event);
    slot.submit(0);
}

/// [`report_drop`] for an IPv6 packet: a `DropEvent6` (kind `EVENT_DROP6`), from the same
/// token bucket.
#[inline(always)]
pub fn report_drop6(
    ctx: &TcContext,
    hook: Hook,
    arrived: Option<&Tuple6>,
    len: u32,
    reason: DropReason,
    site: Site,
) {
    if !take_token() {
        return;
    }
    let Some(mut slot) = LB_EVENTS.reserve::<DropEvent6>(0) else {
        return;
    };
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the whole run.
    let (ifindex, flow_hash) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).hash) };
    // Written in place in the ring buffer: the IPv6 path has no stack to spare for a copy.
    let event = slot.as_mut_ptr();
    // SAFETY: `event` points to the reserved, writable record of a `DropEvent6`.
    unsafe {
        (*event).kind = EVENT_DROP6;
        (*event).reason = reason as u8;
        (*event).file = site.file as u8;
        (*event).hook = hook as u8;
        (*event).line = site.line;
        (*event).ifindex = ifindex;
        (*event).flow_hash = flow_hash;
        (*event).len = len;
        let (proto, saddr, daddr) = match arrived {
            Some(tuple) => (tuple.proto, tuple.saddr, tuple.daddr),
            None => (0, [0; 4], [0; 4]),
        };
        (*event).proto = proto;
        (*event).saddr = saddr;
        (*event).daddr = daddr;
        let (sport, dport, tcp_flags) = match arrived {
            Some(tuple) if matches!(tuple.shape, Shape::Complete | Shape::FirstFragment) => {
                (tuple.sport, tuple.dport, tuple.tcp_flags)
            }
            _ => (0, 0, 0),
        };
        (*event).sport = sport;
        (*event).dport = dport;
        (*event).tcp_flags = tcp_flags;
    }
    slot.submit(0);
}
