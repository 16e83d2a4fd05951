//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6+), which aya 0.14 does not
//! wrap: one syscall writes thousands of entries, so a full sync of 10k services costs a few
//! dozen syscalls instead of hundreds of thousands.
//!
//! The kernel applies a batch element by element, in order, and stops at the first failure,
//! reporting how many it applied: a failed batch leaves a prefix applied, exactly like a failed
//! single write, so `sync::plan`'s ordering argument holds for batches too.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

/// Elements per syscall: large enough to amortise the call, small enough that one call does not
/// hold the CPU for long.
pub const CHUNK: usize = 4096;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A failed batch: how many elements the kernel applied before `error`.
#[derive(Debug)]
pub struct Partial {
    /// Elements applied.
    pub applied: usize,
    /// The cause.
    pub error: io::Error,
}

fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed; the pointers in
    // it reference slices that outlive the call. The kernel zero-extends a shorter attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Inserts or replaces `keys[i] -> values[i]` in order.
pub fn update<K, V>(map: &OwnedFd, keys: &[K], values: &[V]) -> Result<(), Partial> {
    debug_assert_eq!(keys.len(), values.len());
    let mut done = 0;
    for (key_chunk, value_chunk) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: key_chunk.as_ptr() as u64,
            values: value_chunk.as_ptr() as u64,
            count: key_chunk.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        if let Err(error) = call(BPF_MAP_UPDATE_BATCH, &mut attr) {
            return Err(Partial {
                applied: done + attr.count as usize,
                error,
            });
        }
        done += key_chunk.len();
    }
    Ok(())
}

/// Deletes `keys` in order. A missing key fails the batch with ENOENT at that key.
pub fn delete<K>(map: &OwnedFd, keys: &[K]) -> Result<(), Partial> {
    let mut done = 0;
    for chunk in keys.chunks(CHUNK) {
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        if let Err(error) = call(BPF_MAP_DELETE_BATCH, &mut attr) {
            return Err(Partial {
                applied: done + attr.count as usize,
                error,
            });
        }
        done += chunk.len();
    }
    Ok(())
}
