//! Every scenario in tests/scenarios (the examples of the lab format, FORMAT.md) run through
//! `enforcer lab run`: real network namespaces, the real agent and datapath, real traffic.
//! Needs root; lives in this crate because it runs the `enforcer` binary.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn scenarios() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_scenario_matches_its_expected_results() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the lab needs root (network namespaces, BPF)");
        return;
    }
    let list = scenarios();
    assert!(
        list.len() >= 8,
        "the example scenarios are missing: {list:?}"
    );
    let mut failures = Vec::new();
    for dir in &list {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(["lab", "run"])
            .arg(dir)
            .arg("--json")
            .output()
            .expect("running enforcer lab run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "{}: {:?} in {:.1}s\n{}",
            dir.display(),
            out.status,
            started.elapsed().as_secs_f64(),
            stderr
                .lines()
                .filter(|l| l.contains("probes match") || l.contains("mismatch"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The JSON on stdout is the result file: it must parse and cover every step.
        let actual: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!(
                    "{}: no result JSON ({e}); stderr:\n{stderr}",
                    dir.display()
                ));
                continue;
            }
        };
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        assert_eq!(
            actual["steps"].as_array().map(Vec::len),
            expected["steps"].as_array().map(Vec::len),
            "{}: step count",
            dir.display()
        );
        if !out.status.success() {
            failures.push(format!("{}: {:?}\n{stderr}", dir.display(), out.status));
        }
    }
    assert!(
        failures.is_empty(),
        "scenarios failed:\n{}",
        failures.join("\n\n")
    );
}
