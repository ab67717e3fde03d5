//! Map commands aya does not offer: `BPF_MAP_LOOKUP_BATCH` (a whole map read in a few
//! syscalls, where aya's iterator takes two per entry: the next key, then its value) and
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a hash map (an entry removed and returned in one
//! syscall), for the conntrack sweeper; `BPF_MAP_UPDATE_BATCH` (many entries written in one
//! syscall), for a pod's policy entries; and `BPF_PROG_TEST_RUN` on a bare program fd (the
//! sweeper's remover). All are plain `bpf(2)` commands (kernel 5.6 and 5.14; tcx needs 6.6
//! anyway).

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use aya::Pod;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr` for the element commands (UAPI layout).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for the batch commands (UAPI layout).
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

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (UAPI layout).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
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

/// Runs a program once on the packet `data` (`BPF_PROG_TEST_RUN`), which it gets back as the
/// program left it; returns the program's return value. For a program that is a command
/// rather than a hook (the conntrack sweeper's remover), from a thread that holds only its
/// file descriptor.
pub fn test_run(prog: std::os::fd::BorrowedFd<'_>, data: &mut [u8]) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_size_out: data.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: data.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for `cmd`, its size is passed with it, and
    // the buffers it points to outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fd_of(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// Every entry of a hash map (not per-CPU), appended to `out`, about `chunk` entries per
/// syscall. Like any walk of a map the datapath writes meanwhile, it is not a snapshot: an entry
/// added or removed during it may or may not be seen (a hash map's batches go bucket by bucket,
/// so none is seen twice).
pub fn lookup_all<K: Pod, V: Pod>(
    map: &MapData,
    chunk: usize,
    out: &mut Vec<(K, V)>,
) -> io::Result<()> {
    let mut chunk = chunk.max(1);
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk);
    // Where the next batch starts (`None`: at the beginning). Opaque to us; a bucket index for
    // a hash map. Sized generously.
    let mut from: Option<[u64; 8]> = None;
    loop {
        let mut next = [0u64; 8];
        let mut attr = BatchAttr {
            in_batch: from.as_mut().map_or(0, |t| t.as_mut_ptr() as u64),
            out_batch: next.as_mut_ptr() as u64,
            map_fd: fd_of(map),
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let at_end = match &r {
            Ok(()) => false,
            // The end of the map; this last batch may still hold entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than `chunk`: that bucket again, with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                chunk *= 2;
                keys.reserve(chunk);
                values.reserve(chunk);
                continue;
            }
            Err(_) => return r,
        };
        let filled = (attr.count as usize).min(chunk);
        // SAFETY: the kernel wrote `filled` keys and values (each a `Pod`, valid for any bytes)
        // at the start of the buffers, whose capacity is at least `chunk`.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        out.extend(
            keys.drain(..)
                .zip(values.drain(..))
                // SAFETY: initialised by the kernel, above.
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        if at_end {
            return Ok(());
        }
        from = Some(next);
    }
}

/// Writes every `(key, value)` into a hash map (created or replaced), about `chunk` per
/// syscall. On an error, the entries before the one that failed are written (the kernel
/// stops at the first failure), the rest are not.
pub fn update_all<K: Pod, V: Pod>(
    map: &MapData,
    chunk: usize,
    entries: &[(K, V)],
) -> io::Result<()> {
    let mut keys: Vec<K> = Vec::with_capacity(chunk.min(entries.len()));
    let mut values: Vec<V> = Vec::with_capacity(chunk.min(entries.len()));
    for part in entries.chunks(chunk.max(1)) {
        keys.clear();
        values.clear();
        keys.extend(part.iter().map(|(k, _)| *k));
        values.extend(part.iter().map(|(_, v)| *v));
        let mut attr = BatchAttr {
            map_fd: fd_of(map),
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: part.len() as u32,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

/// Removes `key` from a hash map and returns the value it had (`None`: it was not there), in
/// one syscall.
pub fn take<K: Pod, V: Pod>(map: &MapData, key: &K) -> io::Result<Option<V>> {
    let mut value = MaybeUninit::<V>::uninit();
    let mut attr = ElemAttr {
        map_fd: fd_of(map),
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: the kernel wrote the value (a `Pod`).
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}
