//! Helpers of the lab integration tests: running the `enforcer` binary and cleaning up.

use std::process::{Command, Output};

pub fn enforcer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(args)
        .output()
        .expect("running enforcer")
}

/// The command's stdout, or a panic showing everything it printed.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes a lab down even when an assertion fails.
pub struct Down(pub String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = enforcer(&["lab", "down", "--name", &self.0]);
    }
}

#[path = "../../../tests/src/root.rs"]
mod root_skip;

/// The lab needs root (network namespaces, BPF): without it a test returns, and its skip is
/// recorded so that `cargo xtask test` fails (see tests/src/root.rs).
pub use root_skip::root_or_skip as root;
