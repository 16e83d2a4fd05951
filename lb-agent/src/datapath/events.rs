//! Drop events: reads `LB_EVENTS` (a ring buffer), decodes each record by its kind byte
//! (`EVENT_DROP`: a `DropEvent`, `EVENT_DROP6`: a `DropEvent6`) and fans the events out to
//! subscribers (`lbctl monitor`) through the caller's `publish`. A record of another kind, or
//! too short for its kind, is counted ([`skipped_total`]) and skipped: a newer datapath under
//! an older agent loses only what this agent cannot read.
use std::sync::atomic::{AtomicU64, Ordering};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use lb_common::{
    event::{DropEvent, DropEvent6, EVENT_DROP, EVENT_DROP6},
    maps as names,
};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::Error;

/// The drop-event ring buffer, as `take_ring` hands it to `forward`.
pub type Ring = RingBuf<MapData>;

/// One record of `LB_EVENTS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A dropped IPv4 packet (`EVENT_DROP`).
    Drop(DropEvent),
    /// A dropped IPv6 packet (`EVENT_DROP6`).
    Drop6(DropEvent6),
}

/// A record [`parse`] cannot decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    /// Empty: not even a kind byte.
    #[error("an empty event record")]
    Empty,
    /// A kind this agent does not know (a newer datapath's).
    #[error("an event of unknown kind {kind} ({len} bytes)")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
        /// The record's length.
        len: usize,
    },
    /// Shorter than its kind's struct.
    #[error("a kind {kind} event of {len} bytes, shorter than its {want}")]
    Short {
        /// The kind byte.
        kind: u8,
        /// The record's length.
        len: usize,
        /// The length its kind needs.
        want: usize,
    },
}

static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// Records the event reader skipped since start (unknown kind, or too short).
pub fn skipped_total() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// Takes the ring buffer out of the loaded object.
pub fn take_ring(ebpf: &mut Ebpf) -> Result<Ring, Error> {
    let map = ebpf
        .take_map(names::LB_EVENTS)
        .ok_or_else(|| Error::MapType {
            map: names::LB_EVENTS,
            source: "not in the object".into(),
        })?;
    RingBuf::try_from(map).map_err(|err| Error::MapType {
        map: names::LB_EVENTS,
        source: Box::new(err),
    })
}

/// Reads events until `shutdown`, handing each to `publish` (which must not block); records
/// it cannot decode are counted and skipped.
pub async fn forward(
    ring: RingBuf<MapData>,
    publish: impl Fn(&Event),
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the AsyncFd owns the ring buffer, so its descriptor stays open while registered.
    let mut fd = unsafe { AsyncFd::register(ring)? };
    loop {
        let mut guard = tokio::select! {
            guard = fd.readable_mut() => guard?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match parse(&item) {
                Ok(event) => publish(&event),
                Err(skipped) => {
                    // Only the first few: a datapath sending nothing but unknown records must
                    // not flood the log; the count says how many.
                    if SKIPPED.fetch_add(1, Ordering::Relaxed) < 10 {
                        tracing::warn!(%skipped, "skipping a drop event record");
                    }
                }
            }
        }
        guard.clear_ready();
    }
}

/// The event in ring-buffer bytes, by its first byte (the kind); bytes past the kind's struct
/// are ignored.
pub fn parse(bytes: &[u8]) -> Result<Event, Skipped> {
    let (&kind, _) = bytes.split_first().ok_or(Skipped::Empty)?;
    let len = bytes.len();
    match kind {
        EVENT_DROP => read::<DropEvent>(kind, bytes).map(Event::Drop),
        EVENT_DROP6 => read::<DropEvent6>(kind, bytes).map(Event::Drop6),
        _ => Err(Skipped::UnknownKind { kind, len }),
    }
}

/// Plain data valid for every bit pattern: the event structs of `lb_common::event`.
trait EventRecord: Copy {}
impl EventRecord for DropEvent {}
impl EventRecord for DropEvent6 {}

fn read<T: EventRecord>(kind: u8, bytes: &[u8]) -> Result<T, Skipped> {
    let want = std::mem::size_of::<T>();
    if bytes.len() < want {
        return Err(Skipped::Short {
            kind,
            len: bytes.len(),
            want,
        });
    }
    // SAFETY: T is a repr(C) event struct of plain integers, valid for every bit pattern
    // (`EventRecord`), and `bytes` holds at least size_of::<T>() bytes; read_unaligned
    // tolerates any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use lb_common::{addr6_from_octets, event::tcp_flags, proto};

    use super::*;

    /// The bytes of a plain-data struct, as the datapath writes them into the ring.
    fn bytes_of<T: EventRecord>(value: &T) -> Vec<u8> {
        // SAFETY: T is plain data without padding (the event structs' layout asserts).
        unsafe {
            std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn drop4() -> DropEvent {
        DropEvent {
            kind: EVENT_DROP,
            reason: 174,
            file: 3,
            hook: 1,
            line: 42,
            tcp_flags: tcp_flags::SYN,
            proto: proto::TCP,
            ifindex: 2,
            flow_hash: 0x7558_de48,
            saddr: u32::from_ne_bytes([192, 168, 56, 10]),
            daddr: u32::from_ne_bytes([10, 96, 229, 67]),
            sport: 33802u16.to_be(),
            dport: 80u16.to_be(),
            len: 60,
        }
    }

    fn drop6() -> DropEvent6 {
        let addr = |text: &str| {
            addr6_from_octets(text.parse::<std::net::Ipv6Addr>().expect("ipv6").octets())
        };
        DropEvent6 {
            kind: EVENT_DROP6,
            reason: 174,
            file: 3,
            hook: 1,
            line: 42,
            tcp_flags: tcp_flags::SYN,
            proto: proto::TCP,
            ifindex: 2,
            flow_hash: 0x7558_de48,
            saddr: addr("fd00:56::10"),
            daddr: addr("fd00:96::e5:43"),
            sport: 33802u16.to_be(),
            dport: 80u16.to_be(),
            len: 80,
        }
    }

    #[test]
    fn records_decode_by_their_kind_and_others_are_skipped() {
        let v4 = bytes_of(&drop4());
        let v6 = bytes_of(&drop6());
        assert_eq!((v4.len(), v6.len()), (32, 56));
        let mut padded = v4.clone();
        padded.extend_from_slice(&[0xff; 8]);
        let mut unknown = v6.clone();
        unknown[0] = 3;
        let mut v4_kind_in_v6_bytes = v6.clone();
        v4_kind_in_v6_bytes[0] = EVENT_DROP;
        let table: Vec<(&str, Vec<u8>, Result<Event, Skipped>)> = vec![
            ("an IPv4 drop", v4.clone(), Ok(Event::Drop(drop4()))),
            ("an IPv6 drop", v6.clone(), Ok(Event::Drop6(drop6()))),
            (
                "an IPv4 drop with trailing bytes",
                padded,
                Ok(Event::Drop(drop4())),
            ),
            (
                "an IPv6 drop cut to IPv4's size",
                v6[..32].to_vec(),
                Err(Skipped::Short {
                    kind: EVENT_DROP6,
                    len: 32,
                    want: 56,
                }),
            ),
            (
                "an IPv4 drop cut short",
                v4[..31].to_vec(),
                Err(Skipped::Short {
                    kind: EVENT_DROP,
                    len: 31,
                    want: 32,
                }),
            ),
            (
                "an unknown kind",
                unknown,
                Err(Skipped::UnknownKind { kind: 3, len: 56 }),
            ),
            (
                "kind 0",
                vec![0; 32],
                Err(Skipped::UnknownKind { kind: 0, len: 32 }),
            ),
            ("nothing", Vec::new(), Err(Skipped::Empty)),
        ];
        for (what, bytes, want) in table {
            assert_eq!(parse(&bytes), want, "{what}");
        }
        // The kind byte decides, not the length: 56 bytes of kind 1 are an IPv4 drop with
        // trailing bytes (the first 16 bytes are the same in both).
        let Ok(Event::Drop(event)) = parse(&v4_kind_in_v6_bytes) else {
            panic!("kind 1 is an IPv4 drop");
        };
        assert_eq!(
            (event.reason, event.line, event.flow_hash, event.ifindex),
            (174, 42, 0x7558_de48, 2)
        );
    }

    #[test]
    fn every_prefix_of_a_record_parses_or_is_skipped_without_panicking() {
        for bytes in [bytes_of(&drop4()), bytes_of(&drop6())] {
            for end in 0..=bytes.len() {
                let parsed = parse(&bytes[..end]);
                assert_eq!(
                    parsed.is_ok(),
                    end == bytes.len(),
                    "{end} bytes: {parsed:?}"
                );
            }
        }
    }
}
