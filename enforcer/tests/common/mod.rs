//! Helpers of the lab integration tests: running the `enforcer` binary, bringing a lab up and
//! taking it down, its state. (The API tests' agent is `agent.rs`, which they include alone:
//! they have the agent library's test support, with its own root check.)
// Each test binary uses some of the helpers.
#![allow(dead_code)]

use std::path::PathBuf;
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

/// A scenario of `tests/scenarios`.
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/scenarios")
        .join(name)
}

/// A lab name of this test process: `tag` and the process id.
pub fn lab_name(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

/// `enforcer lab up [SCENARIO] --name NAME ARGS...`; the lab is taken down when the returned
/// guard drops, also when `up` or the test fails.
pub fn lab_up(scenario: Option<&std::path::Path>, name: &str, args: &[&str]) -> Down {
    let down = Down(name.to_owned());
    let mut argv = vec!["lab", "up"];
    if let Some(s) = scenario {
        argv.push(s.to_str().expect("a UTF-8 path"));
    }
    argv.extend(["--name", name]);
    argv.extend(args);
    ok(&enforcer(&argv), "lab up");
    down
}

/// A running lab's state directory.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from("/run/enforcer-lab").join(name)
}

/// A running lab's `state.json`.
pub fn state_json(name: &str) -> serde_json::Value {
    let path = state_dir(name).join("state.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[path = "../../../tests/src/root.rs"]
mod root_skip;

/// The lab needs root (network namespaces, BPF): without it a test returns, and its skip is
/// recorded so that `cargo xtask test` fails (see tests/src/root.rs).
pub use root_skip::root_or_skip as root;
