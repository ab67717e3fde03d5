//! Tests that need root and did not get it. Each leaves a marker file in one folder
//! (`tests/src/root.rs`, shared by every test crate); `cargo xtask test` empties the folder,
//! tells the tests where it is, and fails after the run when any marker is there, so that a
//! run without root cannot pass by skipping.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the tests put their markers (`tests/src/root.rs` reads the same variable).
pub const DIR_ENV: &str = "ENFORCER_SKIPPED_ROOT_DIR";

/// The folder, in cargo's target folder.
pub fn dir(ws: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { ws.join(t) })
        .unwrap_or_else(|| ws.join("target"))
        .join("skipped-root-tests")
}

/// Removes the markers of an earlier run.
pub fn clear(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// The tests that left a marker, sorted.
pub fn skipped(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let name = text.trim();
        out.push(if name.is_empty() {
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into()
        } else {
            name.to_owned()
        });
    }
    out.sort();
    Ok(out)
}

/// Fails, naming them, when tests that need root did not run.
pub fn check(dir: &Path) -> Result<()> {
    let tests = skipped(dir)?;
    if tests.is_empty() {
        return Ok(());
    }
    bail!(
        "{} tests needing root did not run; run as root:\n  {}",
        tests.len(),
        tests.join("\n  ")
    )
}

/// The tests' side, to check that both sides agree.
#[cfg(test)]
#[path = "../../tests/src/root.rs"]
#[allow(
    dead_code,
    reason = "only the marker writing and the variable are compared"
)]
mod root;

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn markers_fail_the_run_naming_each_test_and_clearing_them_passes_it() {
        let base =
            TempDir(std::env::temp_dir().join(format!("xtask-skipped-{}", std::process::id())));
        let dir = base.0.join("skipped-root-tests");
        assert!(check(&dir).is_ok(), "no folder: nothing was skipped");
        // As the tests record their skips.
        root::record_skip(&dir, "kernel_events::the_sweeper_reports").unwrap();
        root::record_skip(&dir, "enforcer_agent::lab::root_tests::three_pods").unwrap();
        let err = format!("{:#}", check(&dir).unwrap_err());
        assert!(
            err.starts_with("2 tests needing root did not run; run as root"),
            "{err}"
        );
        assert!(
            err.contains("\n  enforcer_agent::lab::root_tests::three_pods\n  kernel_events::the_sweeper_reports"),
            "{err}"
        );
        clear(&dir).unwrap();
        clear(&dir).unwrap();
        assert!(check(&dir).is_ok());
    }

    #[test]
    fn the_tests_and_xtask_agree_on_the_variable() {
        assert_eq!(root::DIR_ENV, DIR_ENV);
    }
}
