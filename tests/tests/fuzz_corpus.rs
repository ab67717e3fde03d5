//! The committed fuzz corpus (`fuzz/corpus/<target>/`) replayed through the fuzz targets' own
//! functions (the fuzz crate's modules, included here), so that a plain `cargo test` checks
//! every input the fuzzer kept without building the instrumented targets (`cargo xtask fuzz`
//! does that). The packet target loads the real program: it needs root.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code, reason = "the targets' helpers for the fuzzer alone")]
mod fuzz;

use std::path::PathBuf;

use enforcer_tests::privileged;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: an empty corpus", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Runs every input, naming the one that fails.
fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        if let Err(e) = outcome {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{}: {msg}", path.display());
        }
    }
}

#[test]
fn manifests() {
    replay("manifests", fuzz::manifests::run);
}

#[test]
fn manifests_json() {
    replay("manifests_json", fuzz::manifests_json::run);
}

#[test]
fn flow_decode() {
    replay("flow_decode", fuzz::flow_decode::run);
}

#[test]
fn packet() {
    if !privileged() {
        return;
    }
    replay("packet", fuzz::packet::run);
}
