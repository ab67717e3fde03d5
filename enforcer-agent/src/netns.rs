//! Entering network namespaces from the current thread.
//!
//! `setns(2)` with `CLONE_NEWNET` switches only the calling thread, so everything here is
//! synchronous: switch, do the work (typically create a socket), switch back, all without
//! yielding to an async runtime in between. A socket keeps the namespace it was created in
//! for its whole life, so it can be handed to tokio afterwards and used from any thread.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, Socket, Type};

/// Directory where `ip netns add` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setns into network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating a socket in network namespace {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Path of a named namespace (`/run/netns/NAME`).
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// An open handle on a network namespace; keeps the namespace alive while open.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens a namespace by path (`/run/netns/NAME`, `/proc/PID/ns/net`, ...).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self { file, path })
    }

    /// Opens a namespace created by `ip netns add NAME`.
    pub fn open_named(name: &str) -> Result<Self, NetnsError> {
        Self::open(named_path(name))
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Switches the calling thread into this namespace until the guard is dropped.
    ///
    /// The guard is `!Send`: it must be dropped on the thread that created it, and it must not
    /// be held across an `.await`.
    pub fn enter(&self) -> Result<NetnsGuard, NetnsError> {
        let original = Netns::open("/proc/thread-self/ns/net")?;
        setns(&self.file).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        Ok(NetnsGuard {
            original,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Runs `f` with the calling thread inside this namespace, then switches back (also when
    /// `f` panics).
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let _guard = self.enter()?;
        Ok(f())
    }

    /// Creates a socket that lives in this namespace.
    pub fn socket(
        &self,
        domain: Domain,
        ty: Type,
        protocol: Option<Protocol>,
    ) -> Result<Socket, NetnsError> {
        self.run(|| Socket::new(domain, ty, protocol))?
            .map_err(|source| NetnsError::Socket {
                path: self.path.clone(),
                source,
            })
    }
}

/// Restores the thread's previous namespace on drop.
#[derive(Debug)]
pub struct NetnsGuard {
    original: Netns,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(err) = setns(&self.original.file) {
            // A thread left in a foreign namespace would silently create every later socket
            // (and run every later task) there; stopping is the only safe option.
            eprintln!(
                "fatal: cannot switch back to network namespace {}: {err}",
                self.original.path.display()
            );
            std::process::abort();
        }
    }
}

fn setns(file: &File) -> std::io::Result<()> {
    // SAFETY: the fd is valid for the duration of the call (borrowed from `file`);
    // setns has no memory-safety preconditions.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_missing_namespace_names_the_path() {
        let err = Netns::open_named("enf-does-not-exist-xyz").unwrap_err();
        assert!(err
            .to_string()
            .contains("/run/netns/enf-does-not-exist-xyz"));
    }
}
