//! bpffs: where maps and links are pinned, so the datapath outlives the agent.

use std::io;
use std::path::Path;

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf";

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; `c` is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (it is not mounted at boot on
/// every distribution), then creates `dir` below it.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    let root = Path::new(DEFAULT_ROOT);
    if dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root)?;
        let src = c"bpf";
        let target = std::ffi::CString::new(DEFAULT_ROOT).expect("no NUL");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Without CAP_SYS_ADMIN (the DaemonSet does not grant it) the node must have
            // mounted bpffs itself, as systemd does at boot.
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{DEFAULT_ROOT} is not a bpf filesystem and mounting one failed ({e}): \
                     mount it on the node (mount -t bpf bpf {DEFAULT_ROOT}) or run the agent \
                     with CAP_SYS_ADMIN"
                ),
            ));
        }
    }
    std::fs::create_dir_all(dir)?;
    if !is_bpffs(dir) {
        return Err(io::Error::other(format!(
            "{} is not on a bpf filesystem",
            dir.display()
        )));
    }
    Ok(())
}
