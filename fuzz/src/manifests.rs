//! `manifests`: arbitrary bytes as one file of a manifest folder, read by the agent's own
//! `ManifestFolder` (what `enforcer agent --manifests DIR` reads), then compiled for every node
//! the cluster names and turned into the map entries the dataplane would write.
//!
//! Checked, beyond "never panics": bad documents are reported, and never take valid objects
//! with them. The folder holds, beside the fuzzed file, a file of valid objects (`zz.yaml`,
//! read after it), and the fuzzed file ends with one more valid policy: the first must be in
//! force whatever the fuzzed file holds, the second unless the fuzzed file is not YAML at all
//! (a syntax error ends a YAML stream, so nothing after it can be located).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use enforcer_agent::compile::{compile, NodeInput};
use enforcer_agent::dataplane::entries::{endpoint_info, policy_entries, Identities};
use enforcer_agent::model::{Cluster, PolicyKey};
use enforcer_agent::source::manifests::{ManifestFolder, Snapshot};

/// Valid objects in a file of their own: always in force.
const OTHER_FILE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: fuzz, labels: {team: fuzz}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: fuzz, labels: {app: p}}
spec: {nodeName: node, containers: [{name: c, ports: [{containerPort: 8080, name: web}]}]}
status: {podIP: 10.1.0.5, podIPs: [{ip: 10.1.0.5}, {ip: "fd00:1::5"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sentinel-file, namespace: fuzz}
spec:
  podSelector: {matchLabels: {app: p}}
  ingress: [{ports: [{port: web}]}]
"#;

/// The last document of the fuzzed file: in force whenever the file is YAML.
const TRAILER: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sentinel-document, namespace: fuzz}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]}]
"#;

/// This thread's folder (in memory where the machine has /dev/shm: one write and one read per
/// input). Per thread: the corpus replay runs targets on parallel test threads.
fn folder() -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let base = if std::path::Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            };
            remove_stale(&base);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("enforcer-fuzz-manifests-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("creating the manifest folder");
            std::fs::write(dir.join("zz.yaml"), OTHER_FILE).expect("writing the valid file");
            dir
        };
    }
    DIR.with(PathBuf::clone)
}

/// Removes the folders of processes that are gone (libFuzzer exits without destructors).
fn remove_stale(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("enforcer-fuzz-manifests-")
            .and_then(|rest| rest.split('-').next());
        if let Some(pid) = pid {
            if !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Runs one input through the folder, the compiler and the entries.
pub fn run(data: &[u8]) {
    let dir = folder();
    let mut file = data.to_vec();
    file.extend_from_slice(TRAILER.as_bytes());
    std::fs::write(dir.join("a.yaml"), &file).expect("writing the fuzzed file");
    let snapshot = ManifestFolder::new(&dir)
        .read()
        .expect("reading the folder");
    check(&snapshot);
    compile_all(&snapshot.cluster);
}

/// The same checks for bytes that are meant to be valid JSON or YAML (the structured target).
pub fn run_text(text: &str) {
    run(text.as_bytes());
}

fn check(snapshot: &Snapshot) {
    let policies = &snapshot.cluster.policies;
    assert!(
        policies.contains_key(&PolicyKey::new("fuzz", "sentinel-file")),
        "a bad file took the valid objects of another file with it: {:?}",
        snapshot.errors
    );
    let fuzzed_errors: Vec<_> = snapshot
        .errors
        .iter()
        .filter(|e| e.file.ends_with("a.yaml"))
        .collect();
    assert!(
        snapshot.errors.len() == fuzzed_errors.len(),
        "errors in the valid file: {:?}",
        snapshot.errors
    );
    let broken = fuzzed_errors
        .iter()
        .any(|e| e.document == 0 || e.message.starts_with("not valid YAML"));
    if !broken {
        assert!(
            policies.contains_key(&PolicyKey::new("fuzz", "sentinel-document")),
            "the file parsed as YAML, but its last (valid) document is not in force; errors: {:?}",
            snapshot.errors
        );
    }
    for e in &snapshot.errors {
        assert!(!e.message.is_empty(), "an error without a message: {e:?}");
        // Shown to people and in the agent's status: it must render.
        let _ = e.to_string();
    }
}

/// Compiles for every node a pod names and for a node none names, and makes the map entries
/// of every local pod, as `Dataplane::sync` does.
fn compile_all(cluster: &Cluster) {
    let mut nodes: BTreeSet<String> = cluster
        .pods
        .values()
        .filter_map(|p| p.node.clone())
        .take(4)
        .collect();
    nodes.insert("node".into());
    let host_ips: Vec<IpAddr> = vec!["10.1.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap()];
    for name in nodes {
        let tables = compile(
            cluster,
            &NodeInput {
                name,
                host_ips: host_ips.clone(),
                audit: false,
            },
        );
        let ids = Identities::default().assign(&tables).ids;
        for (i, plan) in tables.endpoints.values().enumerate() {
            let entries = policy_entries(plan, &ids);
            let _ = endpoint_info(plan, &entries, i as u32 + 1, 1);
        }
    }
}
