//! bpffs on /sys/fs/bpf: where the agent, the lab's agents and the tests pin their maps. A
//! fresh machine or container may not have it mounted; [`ensure_bpffs`] mounts it, as systemd
//! does at boot.
use std::ffi::CString;
use std::path::Path;
use std::sync::Mutex;

use crate::{Error, Result};

/// Where bpffs is mounted and every pin directory is made.
pub const BPF_ROOT: &str = "/sys/fs/bpf";

/// bpffs's magic number (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Serialises the check and the mount, so that tests running at once mount it only once.
static MOUNT: Mutex<()> = Mutex::new(());

/// Mounts bpffs on [`BPF_ROOT`] unless it is there already: pinning anywhere else fails.
pub fn ensure_bpffs() -> Result<()> {
    let _guard = MOUNT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = Path::new(BPF_ROOT);
    if is_bpffs(root) {
        return Ok(());
    }
    let fstype = c"bpf";
    let target = CString::new(BPF_ROOT).map_err(|err| Error::Unexpected(err.to_string()))?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            action: "mount bpffs on",
            path: root.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether `path` lives on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value for statfs(2) to overwrite.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string; stat is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && u64::try_from(stat.f_type).ok() == Some(BPF_FS_MAGIC)
}
