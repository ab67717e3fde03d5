//! Every scenario in tests/scenarios through the Kubernetes API path: the scenario's objects
//! are written to the API server double (as `kubectl apply` would, step by step: new objects
//! created, changed ones replaced, gone ones deleted), and the lab follows the API
//! (`enforcer lab up --kubeconfig`, `lab wait`, `lab probe --json`): its controller builds
//! the pods the API schedules to its nodes and plays kube-proxy, and every node's agent
//! watches the API. The results must equal the scenario's expected.json, on one node and
//! spread over two. Needs root; each lab gets its own double.

// The API server double lives with the agent library's source tests, which use it too.
#[path = "../../enforcer-agent/tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use enforcer_lab::scenario::{compare, Results, Scenario};
use serde_json::{json, Value};
use support::apiserver::ApiServer;
use support::root;

/// Labs run at once (each spends most of its time waiting for probe timeouts).
const PARALLEL: usize = 2;

fn scenarios() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    out.sort();
    // ENFORCER_SCENARIO=NAME runs one scenario (while debugging it).
    if let Ok(one) = std::env::var("ENFORCER_SCENARIO") {
        out.retain(|p| p.file_name().is_some_and(|n| n == one.as_str()));
    }
    out
}

/// The objects of a multi-document YAML stream (a `v1` List contributes its items).
fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).expect("scenario YAML parses");
        if value.is_null() {
            continue;
        }
        if value["kind"] == "List" {
            out.extend(value["items"].as_array().cloned().unwrap_or_default());
        } else {
            out.push(value);
        }
    }
    out
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let key = match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    };
    (object["kind"].as_str().unwrap_or_default().to_owned(), key)
}

/// Where each pod of a scenario runs: its `spec.nodeName`, else dealt over `spread` (sorted by
/// key, round-robin; the same node in every step). Returns the lab's nodes too.
fn placement(scenario: &Scenario, spread: &[&str]) -> (BTreeMap<String, String>, Vec<String>) {
    let mut named = BTreeMap::new();
    let mut unnamed = BTreeSet::new();
    for pod in scenario.steps.iter().flat_map(|s| &s.pods) {
        match &pod.node {
            Some(node) => {
                named.insert(pod.key(), node.clone());
            }
            None => {
                unnamed.insert(pod.key());
            }
        }
    }
    for (i, key) in unnamed.into_iter().enumerate() {
        named.insert(key, spread[i % spread.len()].to_owned());
    }
    let nodes: BTreeSet<String> = named.values().cloned().collect();
    (named, nodes.into_iter().collect())
}

/// Makes the double hold exactly `objects` (creates, replaces, deletes), as `kubectl apply`
/// and `kubectl delete` of a step would.
fn apply_step(api: &ApiServer, held: &mut BTreeMap<(String, String), Value>, objects: Vec<Value>) {
    let wanted: BTreeMap<(String, String), Value> =
        objects.into_iter().map(|o| (key_of(&o), o)).collect();
    // Deletes first, dependents before their namespaces.
    let gone: Vec<(String, String)> = held
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    for (kind, key) in gone.iter().filter(|(k, _)| k != "Namespace") {
        api.delete_kind(kind_of(kind), key);
        held.remove(&(kind.clone(), key.clone()));
    }
    for (kind, key) in gone.iter().filter(|(k, _)| k == "Namespace") {
        api.delete_kind(kind_of(kind), key);
        held.remove(&(kind.clone(), key.clone()));
    }
    // Namespaces first, then the rest.
    let mut order: Vec<(&(String, String), &Value)> = wanted.iter().collect();
    order.sort_by_key(|((kind, _), _)| kind != "Namespace");
    for (key, object) in order {
        if held.get(key) != Some(object) {
            api.apply_json(object.clone());
            held.insert(key.clone(), object.clone());
        }
    }
}

fn kind_of(name: &str) -> support::apiserver::Kind {
    support::apiserver::Kind::ALL
        .into_iter()
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("the double does not serve {name}"))
}

/// Runs `enforcer lab ARGS...`; `Err` with its output when it fails.
async fn lab(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .arg("lab")
        .args(args)
        .output()
        .await
        .expect("running enforcer lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "`enforcer lab {}` failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// One scenario through the API path as lab `name`, pods without a node spread over
/// `spread`; returns a summary, or what went wrong.
async fn run_one(dir: &Path, name: &str, spread: &[&str]) -> Result<String, String> {
    let started = Instant::now();
    let scenario = Scenario::load(dir).map_err(|e| format!("loading {}: {e}", dir.display()))?;
    let (nodes_of, nodes) = placement(&scenario, spread);
    let api = ApiServer::start().await;
    let work = std::env::temp_dir().join(format!("enforcer-lab-api-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let mut held = BTreeMap::new();
    let mut steps = Vec::new();
    let result = async {
        for (i, step) in scenario.steps.iter().enumerate() {
            let mut objects = documents(&step.cluster_yaml);
            objects.extend(documents(&step.policies_yaml));
            for object in &mut objects {
                if object["kind"] == "Pod" {
                    let (_, key) = key_of(object);
                    object["spec"]["nodeName"] = json!(nodes_of[&key]);
                }
            }
            apply_step(&api, &mut held, objects);
            if i == 0 {
                let nodes = nodes.join(",");
                lab(&[
                    "up",
                    "--kubeconfig",
                    &kubeconfig,
                    "--name",
                    name,
                    "--nodes",
                    &nodes,
                ])
                .await?;
            } else {
                lab(&["wait", "--name", name, "--timeout", "30s"]).await?;
            }
            let probes = step.dir.join("probes.yaml");
            let out = lab(&["probe", &probes.to_string_lossy(), "--name", name, "--json"]).await?;
            let result: Value = serde_json::from_str(&out)
                .map_err(|e| format!("step {}: probe output is not JSON ({e}):\n{out}", i + 1))?;
            steps.push(result["steps"][0].clone());
        }
        Ok::<(), String>(())
    }
    .await;
    let _ = lab(&["down", "--name", name]).await;
    result?;
    let actual = work.join("actual.json");
    std::fs::write(&actual, json!({ "steps": steps }).to_string()).unwrap();
    let actual = Results::load(&actual).map_err(|e| format!("the results do not load: {e}"))?;
    let _ = std::fs::remove_dir_all(&work);
    let expected = scenario
        .expected
        .as_ref()
        .expect("the scenario has expected.json");
    let cmp = compare(expected, &actual);
    let summary = format!(
        "{} on {} node(s) via the API: {cmp} in {:.1}s",
        dir.file_name().unwrap().to_string_lossy(),
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    if cmp.is_match() {
        Ok(summary)
    } else {
        Err(summary)
    }
}

async fn run_all(list: Vec<PathBuf>, tag: &str, spread: &'static [&'static str]) {
    let queue = Arc::new(std::sync::Mutex::new(list.into_iter().enumerate()));
    let mut tasks = Vec::new();
    for _ in 0..PARALLEL {
        let queue = queue.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                let Some((i, dir)) = queue.lock().unwrap().next() else {
                    return failures;
                };
                let name = format!("{tag}{}-{i}", std::process::id());
                match run_one(&dir, &name, spread).await {
                    Ok(summary) => eprintln!("{summary}"),
                    Err(failure) => {
                        eprintln!("FAILED {failure}");
                        failures.push(failure);
                    }
                }
            }
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_through_the_api_on_one_node() {
    if !root() {
        return;
    }
    let list = scenarios();
    if std::env::var("ENFORCER_SCENARIO").is_err() {
        assert!(list.len() >= 40, "the scenarios are missing: {list:?}");
    }
    run_all(list, "k", &["node-a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_through_the_api_spread_over_two_nodes() {
    if !root() {
        return;
    }
    // Scenarios whose pods all name their node run the same either way (above).
    let list: Vec<PathBuf> = scenarios()
        .into_iter()
        .filter(|d| {
            let s = Scenario::load(d).unwrap();
            s.steps
                .iter()
                .flat_map(|s| &s.pods)
                .all(|p| p.node.is_none())
        })
        .collect();
    if std::env::var("ENFORCER_SCENARIO").is_err() {
        assert!(list.len() >= 35, "{list:?}");
    }
    run_all(list, "m", &["node-a", "node-b"]).await;
}
