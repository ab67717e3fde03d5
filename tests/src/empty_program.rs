//! An empty TC program (it returns "no verdict" at once), loaded with two raw `bpf()` calls,
//! and its `BPF_PROG_TEST_RUN` time: the benchmarks report the enforcer's per-packet cost
//! above this, which is what the test run itself costs (context setup, the clock reads).

use std::os::fd::{FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `bpf_attr` as a zeroed buffer larger than any of its variants used here.
#[repr(C, align(8))]
struct Attr([u8; 160]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 160])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn read_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable bpf_attr-sized buffer for the call's duration; the
    // pointers inside it point to live buffers of the caller.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A loaded empty TC program.
pub struct EmptyProgram(OwnedFd);

impl EmptyProgram {
    pub fn load() -> std::io::Result<EmptyProgram> {
        // r0 = -1 (TC_ACT_UNSPEC); exit
        let insns: [u64; 2] = [0xb7 | ((-1i32 as u32 as u64) << 32), 0x95];
        let license = b"GPL\0";
        let mut attr = Attr::new();
        attr.u32(0, BPF_PROG_TYPE_SCHED_CLS)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64);
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        // SAFETY: a new fd the kernel returned, owned by nobody else.
        Ok(EmptyProgram(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Mean ns per run of `repeat` runs over `pkt`, as the kernel measures it.
    pub fn run_ns(&self, pkt: &[u8], repeat: u32) -> std::io::Result<f64> {
        use std::os::fd::AsRawFd;
        let mut attr = Attr::new();
        attr.u32(0, self.0.as_raw_fd() as u32)
            .u32(8, pkt.len() as u32)
            .u64(16, pkt.as_ptr() as u64)
            .u32(32, repeat);
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(f64::from(attr.read_u32(36)))
    }
}
