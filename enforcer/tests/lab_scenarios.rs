//! Every scenario in tests/scenarios (the lab format, docs/scenario-format.md) run through
//! `enforcer lab run`: real network namespaces, the real agents and datapath, real traffic,
//! kube-proxy's NAT for Services. Each scenario runs as written (pods without a node on the
//! one default node) and spread over two nodes (`--nodes node-a,node-b`), which must give
//! the same results (docs/scenario-format.md "Nodes and `--nodes`"). Needs root; lives in
//! this crate because it runs the `enforcer` binary.
//!
//! The two tests run side by side (the test harness's threads), and each keeps two labs
//! running at once: a lab spends most of its time waiting for probe timeouts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// Without root a test returns, and its skip is recorded (see tests/src/root.rs).
#[path = "../../tests/src/root.rs"]
mod root_skip;
use root_skip::root_or_skip as root;

/// Labs each test runs at once.
const PARALLEL: usize = 2;

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

/// The nodes every pod of `dir` names (`None`: a pod naming none).
fn named_nodes(dir: &Path) -> BTreeSet<Option<String>> {
    let scenario = enforcer_lab::scenario::Scenario::load(dir).expect("scenario loads");
    scenario
        .steps
        .iter()
        .flat_map(|s| s.pods.iter().map(|p| p.node.clone()))
        .collect()
}

/// Runs one scenario as lab `name`; `Err` describes the failure.
fn run_one(dir: &Path, name: &str, extra: &[&str], nodes: usize) -> Result<String, String> {
    let started = Instant::now();
    let tag = if extra.is_empty() {
        "as written"
    } else {
        "spread"
    };
    let out = Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(["lab", "run"])
        .arg(dir)
        .args(["--json", "--name", name])
        .args(extra)
        .output()
        .expect("running enforcer lab run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = format!(
        "{} [{tag}]: {:?} in {:.1}s: {}",
        dir.file_name().unwrap().to_string_lossy(),
        out.status,
        started.elapsed().as_secs_f64(),
        stderr
            .lines()
            .filter(|l| l.contains("probes match") || l.contains("MISMATCH"))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    // The JSON on stdout is the result file: it must parse and cover every step.
    let actual: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{summary}\nno result JSON ({e}); stderr:\n{stderr}"))?;
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    if actual["steps"].as_array().map(Vec::len) != expected["steps"].as_array().map(Vec::len) {
        return Err(format!("{summary}\nstep count differs"));
    }
    // The lab must have built the nodes asked for: every step line names them.
    let steps: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" node(s), "))
        .collect();
    let want = format!(" on {nodes} node(s), ");
    if steps.is_empty() || !steps.iter().all(|l| l.contains(&want)) {
        return Err(format!(
            "{summary}\nexpected every step{want}got:\n{}",
            steps.join("\n")
        ));
    }
    if !out.status.success() {
        return Err(format!("{summary}\n{stderr}"));
    }
    Ok(summary)
}

/// Runs the scenarios, `PARALLEL` at a time, and fails with every failure at the end.
fn run_all(list: Vec<(PathBuf, usize)>, tag: &str, extra: &[&str]) {
    let queue = Mutex::new(list.into_iter().enumerate());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let Some((i, (dir, nodes))) = queue.lock().unwrap().next() else {
                    return;
                };
                let name = format!("{tag}{}-{i}", std::process::id());
                match run_one(&dir, &name, extra, nodes) {
                    Ok(summary) => eprintln!("{summary}"),
                    Err(failure) => {
                        eprintln!("FAILED {failure}");
                        failures.lock().unwrap().push(failure);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_scenario_on_its_own_nodes() {
    if !root() {
        return;
    }
    let list = scenarios();
    assert!(list.len() >= 40, "the scenarios are missing: {list:?}");
    // As written: the default node for pods naming none, plus every named node.
    let with_nodes: Vec<(PathBuf, usize)> = list
        .into_iter()
        .map(|d| {
            let n = named_nodes(&d).len().max(1);
            (d, n)
        })
        .collect();
    assert!(
        with_nodes.iter().filter(|(_, n)| *n >= 2).count() >= 4,
        "some scenarios place pods on two named nodes"
    );
    run_all(with_nodes, "o", &[]);
}

#[test]
fn every_scenario_spread_over_two_nodes() {
    if !root() {
        return;
    }
    // Scenarios whose pods all name their node run the same either way (above).
    let list: Vec<(PathBuf, usize)> = scenarios()
        .into_iter()
        .filter_map(|d| {
            let mut nodes = named_nodes(&d);
            nodes.remove(&None).then(|| {
                nodes.extend([Some("node-a".into()), Some("node-b".into())]);
                (d, nodes.len())
            })
        })
        .collect();
    assert!(list.len() >= 35, "{list:?}");
    run_all(list, "s", &["--nodes", "node-a,node-b"]);
}
