//! B8: the harness's floor. Tiny TC programs run under the same `BPF_PROG_TEST_RUN` harness as
//! `from_pod` (same frame, same output buffer, same `repeat` values): an empty program, and
//! programs doing exactly one hash-map lookup (a 16-byte key, like `CtKey4`, that hits). Every
//! packet figure is then read as "floor + n ns".
//!
//! The programs are a handful of raw BPF instructions loaded with the `bpf(2)` system call, so
//! that the product's eBPF object carries nothing that exists only for the bench.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use anyhow::{Context as _, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `src_reg` of an `ld_imm64` whose immediate is a map file descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Helper `bpf_map_lookup_elem`.
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// Entries the lookup maps hold (of `LOOKUP_MAP_MAX`), so that the lookup walks a populated
/// table rather than an empty one.
const LOOKUP_MAP_FILL: u32 = 10_000;
/// Capacity of the lookup maps: the datapath's conntrack default.
const LOOKUP_MAP_MAX: u32 = 262_144;
/// Key size of the lookup maps: `CtKey4`'s.
const KEY_SIZE: u32 = 16;

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `r0 = TC_ACT_UNSPEC (-1); exit`.
const RETURN_UNSPEC: [Insn; 2] = [insn(0xb7, 0, 0, 0, -1), insn(0x95, 0, 0, 0, 0)];

/// The program that looks key `{1, 0, 0, 0}` up in `map_fd` and reads the value's first word.
fn lookup_program(map_fd: i32) -> Vec<Insn> {
    vec![
        // *(u64 *)(r10 - 16) = 1; *(u64 *)(r10 - 8) = 0: the key on the stack.
        insn(0x7a, 10, 0, -16, 1),
        insn(0x7a, 10, 0, -8, 0),
        // r2 = r10 - 16
        insn(0xbf, 2, 10, 0, 0),
        insn(0x07, 2, 0, 0, -16),
        // r1 = map (ld_imm64, two slots)
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // call bpf_map_lookup_elem
        insn(0x85, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),
        // if r0 == 0 goto +1; r1 = *(u64 *)(r0 + 0)
        insn(0x15, 0, 0, 1, 0),
        insn(0x79, 1, 0, 0, 0),
        RETURN_UNSPEC[0],
        RETURN_UNSPEC[1],
    ]
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-padded `union bpf_attr` prefix of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// `union bpf_attr` for `BPF_MAP_CREATE` (the leading fields; the rest zero).
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    rest: [u32; 27],
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (the leading fields; the rest zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    rest: [u64; 16],
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// A loaded floor program (and the map it reads, kept open while it lives).
pub struct FloorProgram {
    /// What it does, for the report.
    pub name: &'static str,
    prog: OwnedFd,
    _map: Option<OwnedFd>,
}

fn own(fd: i64) -> OwnedFd {
    // SAFETY: a file descriptor the kernel just returned to this process, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn load_program(name: &str, insns: &[Insn]) -> anyhow::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut prog_name = [0u8; 16];
    prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgLoad::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(own(fd)),
        Err(err) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            bail!(
                "load the floor program {name}: {err}; verifier: {}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

fn lookup_map(map_type: u32) -> anyhow::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type,
        key_size: KEY_SIZE,
        value_size: 8,
        max_entries: LOOKUP_MAP_MAX,
        ..MapCreate::default()
    };
    let map = own(bpf(BPF_MAP_CREATE, &mut attr).context("create the floor's hash map")?);
    for k in 1..=LOOKUP_MAP_FILL {
        let key = [u64::from(k), 0];
        let value = u64::from(k);
        let mut attr = MapUpdate {
            map_fd: map.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: std::ptr::from_ref(&value) as u64,
            ..MapUpdate::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("fill the floor's hash map")?;
    }
    Ok(map)
}

impl FloorProgram {
    /// The floor programs: empty, one hash lookup, one LRU-hash lookup.
    pub fn all() -> anyhow::Result<Vec<Self>> {
        let hash = lookup_map(BPF_MAP_TYPE_HASH)?;
        let lru = lookup_map(BPF_MAP_TYPE_LRU_HASH)?;
        Ok(vec![
            Self {
                name: "empty program",
                prog: load_program("lbbench_empty", &RETURN_UNSPEC)?,
                _map: None,
            },
            Self {
                name: "one hash lookup (16 B key, hit)",
                prog: load_program("lbbench_hash", &lookup_program(hash.as_raw_fd()))?,
                _map: Some(hash),
            },
            Self {
                name: "one LRU-hash lookup (16 B key, hit)",
                prog: load_program("lbbench_lru", &lookup_program(lru.as_raw_fd()))?,
                _map: Some(lru),
            },
        ])
    }

    /// Runs the program on `frame` `repeat` times, like `LbDatapath::run`: the kernel-measured
    /// time per run.
    pub fn run(&self, frame: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut attr = TestRun {
            prog_fd: self.prog.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..TestRun::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).with_context(|| format!("run {}", self.name))?;
        if attr.retval as i32 != -1 {
            bail!("{} returned {}", self.name, attr.retval as i32);
        }
        Ok(Duration::from_nanos(u64::from(attr.duration)))
    }
}
