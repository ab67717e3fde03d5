//! Tests that need root never pass by skipping. Without root, [`root_or_skip`] prints
//! `skipped: <test> needs root` and leaves a marker file in the folder of skipped tests:
//! `$ENFORCER_SKIPPED_ROOT_DIR` (set by `cargo xtask test`), else `target/skipped-root-tests/`.
//! `cargo xtask test` empties that folder before the run and fails after it when a marker is
//! there (see `xtask/src/skipped.rs`). A skip that cannot be recorded fails the test.
//!
//! Only std and libc: the agent's own tests include this file as a module (`#[path]`), so each
//! crate's `CARGO_MANIFEST_DIR` and `CARGO_TARGET_TMPDIR` are its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where the markers go, when set (`cargo xtask test` sets it; the name is also in
/// `xtask/src/skipped.rs`).
pub const DIR_ENV: &str = "ENFORCER_SKIPPED_ROOT_DIR";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The folder of the markers.
pub fn skipped_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV) {
        return dir.into();
    }
    // Integration tests and benches know the target folder (`target/tmp` is in it); unit
    // tests only their crate's folder, which sits in the workspace.
    let target = option_env!("CARGO_TARGET_TMPDIR")
        .and_then(|tmp| Path::new(tmp).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("skipped-root-tests")
}

/// The name of the running test as cargo shows it (`kernel_events::a_test`,
/// `enforcer_agent::lab::root_tests::a_test`): the test binary's name without its hash, and
/// the test's thread's name; `binary::file:line` where the test runs on the main thread.
fn test_name(at: &std::panic::Location<'_>) -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let binary = match exe.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => exe,
    };
    match std::thread::current().name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => format!("{binary}::{}:{}", at.file(), at.line()),
    }
}

/// Whether this process is root. When it is not: says that the calling test does not run,
/// and records it for `cargo xtask test` (panics when it cannot: an unrecorded skip would
/// pass).
#[track_caller]
pub fn root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    let test = test_name(std::panic::Location::caller());
    // Straight to stderr, past the test harness's capture: a skip shows in a passing run.
    let _ = writeln!(std::io::stderr(), "skipped: {test} needs root");
    record_skip(&skipped_dir(), &test)
        .unwrap_or_else(|e| panic!("{test} needs root, and its skip could not be recorded: {e}"));
    false
}

/// Leaves the marker of `test` in `dir`.
pub fn record_skip(dir: &Path, test: &str) -> std::io::Result<()> {
    let file: String = test
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' | '.' => c,
            _ => '_',
        })
        .collect();
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(file), format!("{test}\n")))
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
}
