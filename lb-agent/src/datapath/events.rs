//! Drop events: reads `LB_EVENTS` (a ring buffer) and fans the events out to subscribers
//! (`lbctl monitor`) through the caller's `publish`.
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use lb_common::{event::DropEvent, maps as names};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::Error;

/// The drop-event ring buffer, as `take_ring` hands it to `forward`.
pub type Ring = RingBuf<MapData>;

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

/// Reads events until `shutdown`, handing each to `publish` (which must not block).
pub async fn forward(
    ring: RingBuf<MapData>,
    publish: impl Fn(&DropEvent),
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
            if let Some(event) = parse(&item) {
                publish(&event);
            }
        }
        guard.clear_ready();
    }
}

/// A `DropEvent` from ring-buffer bytes; `None` for records of another size.
pub fn parse(bytes: &[u8]) -> Option<DropEvent> {
    if bytes.len() < std::mem::size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: DropEvent is repr(C) plain data valid for every bit pattern, and the buffer holds
    // at least size_of::<DropEvent>() bytes; read_unaligned tolerates any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DropEvent>()) })
}
