//! Pinned tcx links, replaced in place. A new agent (an upgrade, or a restart) must put its
//! programs in force on the pods an earlier agent attached without a moment with no program:
//! detaching and attaching again leaves a window in which the pod's traffic is not judged.
//! `BPF_LINK_UPDATE` swaps the program of a live link atomically, and doing it on the pinned
//! link (opened with `BPF_OBJ_GET`, the pin left where it is) means that even a crash halfway
//! leaves the old or the new program in force, never none.
//!
//! aya replaces a link's program only for a link it owns (`SchedClassifier::attach_to_link`),
//! which for a pinned link means unpinning it first; hence these two system calls here.
//!
//! The update also tells whether a pinned link is still live: the link of an interface that
//! went away stays pinned but is defunct, and the kernel refuses to update it (`ENOLINK`). A
//! new pod that got the freed ifindex therefore never inherits "attached" from it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::TcAttachOptions,
    SchedClassifier, TcAttachType,
};
use enforcer_common::maps as names;

use super::{interfaces, Dataplane, DataplaneError, Iface, Result};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `union bpf_attr` is larger than any of its members; the kernel reads `size` bytes and
/// requires the rest of what it knows to be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size given, alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the object pinned at `path` (the pin stays).
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr([0; 128]);
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr.0[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Puts `program` in force on the link pinned at `path`, atomically. `Err` when there is no
/// such pin or the link is no longer live (its interface went away).
pub fn update_pinned(path: &Path, program: impl AsFd) -> std::io::Result<()> {
    let link = obj_get(path)?;
    let mut attr = Attr([0; 128]);
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(program.as_fd().as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// The tcx links of the pods' interfaces, pinned under `<pin dir>/links/<ifindex>-<program>`.
impl Dataplane {
    /// Puts this agent's programs in force on `ifindex`'s pinned links, atomically
    /// ([`links::update_pinned`]); removes the pin of a link that is no longer live (its
    /// interface went away). Returns whether both directions are now in force.
    pub(super) fn refresh_links(&self, ifindex: u32) -> bool {
        let mut live = 0;
        for program in [names::programs::POD_EGRESS, names::programs::POD_INGRESS] {
            let path = self.link_path(ifindex, program);
            if !path.exists() {
                continue;
            }
            let Ok(fd) = self.program_fd(program) else {
                continue;
            };
            match update_pinned(&path, fd) {
                Ok(()) => live += 1,
                Err(err) => {
                    tracing::debug!(ifindex, program, error = %err, "pinned link not live: removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        live == 2
    }
    /// The link pins of interfaces that have no endpoint record: dead ones (an interface
    /// that went away while no agent ran) are removed; live ones (an earlier agent's
    /// quarantine, or an interrupted detach) get this agent's programs and are held as
    /// quarantined, in force, until the first [`Dataplane::quarantine`] call keeps or
    /// releases them.
    pub(super) fn adopt_unclaimed_links(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.pin_dir.join("links")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name.split_once('-').and_then(|(i, program)| {
                let program = [names::programs::POD_EGRESS, names::programs::POD_INGRESS]
                    .into_iter()
                    .find(|p| *p == program)?;
                Some((i.parse::<u32>().ok()?, program))
            });
            if parsed.is_some_and(|(i, _)| self.endpoints.contains_key(&i)) {
                continue;
            }
            let live = parsed.is_some_and(|(ifindex, program)| {
                self.program_fd(program)
                    .is_ok_and(|fd| update_pinned(&entry.path(), fd).is_ok())
                    && {
                        let ifname =
                            interfaces::name_of(ifindex).unwrap_or_else(|| ifindex.to_string());
                        self.quarantined.insert(ifindex, ifname);
                        true
                    }
            });
            if !live {
                let _ = std::fs::remove_file(entry.path());
                tracing::info!(pin = %name, "removed the pin of a link that is gone");
            }
        }
    }
    pub(super) fn program_fd(&self, name: &'static str) -> Result<&aya::programs::ProgramFd> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .expect("loaded in open")
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        prog.fd()
            .map_err(|source| DataplaneError::Program { name, source })
    }
    pub(super) fn link_path(&self, ifindex: u32, program: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{ifindex}-{program}"))
    }
    /// Attaches both programs to a host-side veth and pins the links, so the datapath stays
    /// in force when the agent exits.
    pub(super) fn attach(&mut self, iface: &Iface) -> Result<()> {
        std::fs::create_dir_all(self.pin_dir.join("links")).map_err(|source| {
            DataplaneError::Bpffs {
                path: self.pin_dir.join("links"),
                source,
            }
        })?;
        for (program, hook) in [
            (names::programs::POD_EGRESS, TcAttachType::Ingress),
            (names::programs::POD_INGRESS, TcAttachType::Egress),
        ] {
            let path = self.link_path(iface.ifindex, program);
            if path.exists() {
                // A live link (an earlier agent's, or one direction of an attach that a crash
                // interrupted) gets this program in place: never detached, then attached.
                if update_pinned(&path, self.program_fd(program)?).is_ok() {
                    continue;
                }
                // The link of an earlier interface with this index: defunct, replaced.
                let _ = std::fs::remove_file(&path);
            }
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(program)
                .expect("loaded in open")
                .try_into()
                .map_err(|source| DataplaneError::Program {
                    name: program,
                    source,
                })?;
            let id = prog
                .attach_with_options(
                    &iface.name,
                    hook,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|source| DataplaneError::Attach {
                    program,
                    ifname: iface.name.clone(),
                    source,
                })?;
            let link = prog
                .take_link(id)
                .map_err(|source| DataplaneError::Attach {
                    program,
                    ifname: iface.name.clone(),
                    source,
                })?;
            let fd: FdLink = link
                .try_into()
                .map_err(
                    |e: aya::programs::links::LinkError| DataplaneError::PinLink {
                        program,
                        ifname: iface.name.clone(),
                        path: path.clone(),
                        source: Box::new(e),
                    },
                )?;
            fd.pin(&path).map_err(|e| DataplaneError::PinLink {
                program,
                ifname: iface.name.clone(),
                path: path.clone(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
    /// Detaches from an interface (which may already be gone, taking its links with it).
    pub(super) fn detach(&mut self, ifindex: u32) {
        for program in [names::programs::POD_EGRESS, names::programs::POD_INGRESS] {
            let path = self.link_path(ifindex, program);
            if let Ok(link) = PinnedLink::from_pin(&path) {
                // Unpinning drops the last reference: the kernel detaches the program.
                let _ = link.unpin();
            }
        }
    }
}
