//! The deployment's security and wiring properties (deploy/*.yaml), so that they do not
//! regress: an unprivileged agent with exactly the capabilities it was measured to need, the
//! namespace's Pod Security labels, a read-only ClusterRole over exactly what the agent watches,
//! per-node pins, resources, the metrics Service, and a kustomization listing every manifest.
//! (The schemas themselves are checked by `cargo xtask validate-manifests`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    workspace().join("deploy")
}

/// The YAML files directly in deploy/ (the deployable manifests and the kustomization).
fn deploy_yaml_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

/// Every document of every manifest (the kustomization excepted), with its file.
fn objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for file in deploy_yaml_files() {
        if file == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(deploy_dir().join(&file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if !v.is_null() {
                out.push((file.clone(), v));
            }
        }
    }
    out
}

fn the(kind: &str, name: &str) -> Value {
    let found: Vec<Value> = objects()
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| {
            v["kind"].as_str() == Some(kind) && v["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name} in deploy/");
    found.into_iter().next().unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn agent_container() -> Value {
    let ds = the("DaemonSet", "enforcer");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .clone();
    containers
        .into_iter()
        .find(|c| c["name"].as_str() == Some("agent"))
        .expect("a container named agent")
}

/// Every `privileged: true` anywhere in `v`, as paths.
fn privileged_paths(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                let key = k.as_str().unwrap_or("?");
                let p = format!("{path}.{key}");
                if key == "privileged" && val.as_bool() == Some(true) {
                    out.push(p.clone());
                }
                privileged_paths(val, &p, out);
            }
        }
        Value::Sequence(s) => {
            for (i, val) in s.iter().enumerate() {
                privileged_paths(val, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn nothing_is_privileged() {
    let mut found = Vec::new();
    for (file, v) in objects() {
        privileged_paths(&v, &file, &mut found);
    }
    assert!(found.is_empty(), "privileged: true in {found:?}");
}

#[test]
fn the_agent_has_exactly_its_capabilities_and_nothing_else() {
    let sc = &agent_container()["securityContext"];
    let mut add = strings(&sc["capabilities"]["add"]);
    let n = add.len();
    add.sort();
    add.dedup();
    assert_eq!(n, add.len(), "a capability is added twice: {add:?}");
    assert_eq!(
        add,
        ["BPF", "NET_ADMIN", "PERFMON"],
        "the capabilities measured to be needed (deploy/README.md, Security)"
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_ne!(sc["privileged"].as_bool(), Some(true));
    let pod = &the("DaemonSet", "enforcer")["spec"]["template"]["spec"];
    let seccomp = sc["seccompProfile"]["type"]
        .as_str()
        .or(pod["securityContext"]["seccompProfile"]["type"].as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"));
    // bpffs writes are denied by the runtimes' default AppArmor profile.
    assert_eq!(sc["appArmorProfile"]["type"].as_str(), Some("Unconfined"));
    // Bidirectional propagation is for privileged containers only (the API rejects it).
    for m in agent_container()["volumeMounts"].as_sequence().unwrap() {
        assert_ne!(
            m["mountPropagation"].as_str(),
            Some("Bidirectional"),
            "{m:?}"
        );
    }
    // Nothing else on the pod that would add privilege.
    for key in ["hostPID", "hostIPC"] {
        assert_ne!(pod[key].as_bool(), Some(true), "{key}");
    }
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
}

#[test]
fn the_namespace_enforces_privileged_and_warns_and_audits_at_baseline() {
    let ns = the("Namespace", "enforcer-system");
    let labels = &ns["metadata"]["labels"];
    for (mode, level) in [
        ("enforce", "privileged"),
        ("warn", "baseline"),
        ("audit", "baseline"),
    ] {
        assert_eq!(
            labels[format!("pod-security.kubernetes.io/{mode}").as_str()].as_str(),
            Some(level),
            "{mode}"
        );
        assert!(
            labels[format!("pod-security.kubernetes.io/{mode}-version").as_str()]
                .as_str()
                .is_some(),
            "{mode}-version"
        );
    }
    // Every namespaced object is in it.
    for (file, v) in objects() {
        if let Some(n) = v["metadata"]["namespace"].as_str() {
            assert_eq!(n, "enforcer-system", "{file}: {:?}", v["metadata"]["name"]);
        }
    }
}

/// The kinds the agent watches, read from its Kubernetes source: `impl Watched for Kind` (the
/// network-policy-api kinds by their serde types' names, `...Object`).
fn watched_kinds() -> BTreeSet<String> {
    let src = std::fs::read_to_string(workspace().join("enforcer-agent/src/source/kube.rs"))
        .expect("the agent's Kubernetes source");
    let kinds: BTreeSet<String> = src
        .split("impl Watched for ")
        .skip(1)
        .filter_map(|rest| rest.split_once(' ').map(|(k, _)| k.trim().to_owned()))
        .collect();
    assert!(
        !kinds.is_empty(),
        "no `impl Watched for` in kube.rs: has it changed style?"
    );
    kinds
}

fn api_resource(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "Namespace" => ("", "namespaces"),
        "Pod" => ("", "pods"),
        "Service" => ("", "services"),
        "Node" => ("", "nodes"),
        "NetworkPolicy" => ("networking.k8s.io", "networkpolicies"),
        "EndpointSlice" => ("discovery.k8s.io", "endpointslices"),
        "ClusterNetworkPolicyObject" => ("policy.networking.k8s.io", "clusternetworkpolicies"),
        "AdminNetworkPolicyObject" => ("policy.networking.k8s.io", "adminnetworkpolicies"),
        "BaselineAdminNetworkPolicyObject" => {
            ("policy.networking.k8s.io", "baselineadminnetworkpolicies")
        }
        other => panic!("the agent watches {other}: add it here and to deploy/rbac.yaml"),
    }
}

#[test]
fn the_cluster_role_reads_exactly_what_the_agent_watches() {
    let role = the("ClusterRole", "enforcer");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        assert!(rule["nonResourceURLs"].is_null(), "{rule:?}");
        assert!(rule["resourceNames"].is_null(), "{rule:?}");
        let verbs = strings(&rule["verbs"]);
        for v in &verbs {
            assert!(
                ["get", "list", "watch"].contains(&v.as_str()),
                "verb {v} in {rule:?}: the agent only reads"
            );
        }
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                assert!(!resource.contains('*') && !group.contains('*'), "{rule:?}");
                granted.insert((group.clone(), resource, verbs.clone()));
            }
        }
    }
    let watched: BTreeSet<(String, String)> = watched_kinds()
        .iter()
        .map(|k| api_resource(k))
        .map(|(g, r)| (g.to_owned(), r.to_owned()))
        .collect();
    assert_eq!(
        watched,
        [
            ("", "namespaces"),
            ("", "nodes"),
            ("", "pods"),
            ("", "services"),
            ("discovery.k8s.io", "endpointslices"),
            ("networking.k8s.io", "networkpolicies"),
            ("policy.networking.k8s.io", "adminnetworkpolicies"),
            ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
            ("policy.networking.k8s.io", "clusternetworkpolicies"),
        ]
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect(),
        "the agent's watches changed: update deploy/rbac.yaml and this test"
    );
    let resources: BTreeSet<(String, String)> = granted
        .iter()
        .map(|(g, r, _)| (g.clone(), r.clone()))
        .collect();
    let extra: Vec<_> = resources.difference(&watched).collect();
    assert!(extra.is_empty(), "granted but not watched: {extra:?}");
    for (g, r) in &watched {
        let verbs: BTreeSet<&str> = granted
            .iter()
            .filter(|(gg, rr, _)| gg == g && rr == r)
            .flat_map(|(_, _, v)| v.iter().map(String::as_str))
            .collect();
        assert!(
            verbs.contains("list") && verbs.contains("watch"),
            "{g}/{r}: the watcher needs list and watch, granted {verbs:?}"
        );
    }
    // Bound to the agent's ServiceAccount.
    let binding = the("ClusterRoleBinding", "enforcer");
    assert_eq!(binding["roleRef"]["name"].as_str(), Some("enforcer"));
    let subject = &binding["subjects"][0];
    assert_eq!(subject["kind"].as_str(), Some("ServiceAccount"));
    assert_eq!(subject["name"].as_str(), Some("enforcer"));
    assert_eq!(subject["namespace"].as_str(), Some("enforcer-system"));
    let ds = the("DaemonSet", "enforcer");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        Some("enforcer")
    );
}

fn env_field(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
        .map(str::to_owned)
}

#[test]
fn pins_are_per_node_and_metrics_listen_on_the_nodes_address() {
    let c = agent_container();
    let args = strings(&c["args"]);
    assert!(
        args.contains(&"--pin-dir=/sys/fs/bpf/enforcer/$(NODE_NAME)".to_string()),
        "{args:?}"
    );
    assert_eq!(env_field(&c, "NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert!(
        args.contains(&"--metrics-addr=[$(NODE_IP)]:9966".to_string()),
        "{args:?}"
    );
    assert_eq!(env_field(&c, "NODE_IP").as_deref(), Some("status.hostIP"));
    let ds = the("DaemonSet", "enforcer");
    let bpffs = ds["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("bpffs"))
        .expect("a bpffs volume")
        .clone();
    assert_eq!(bpffs["hostPath"]["path"].as_str(), Some("/sys/fs/bpf"));
}

/// A memory quantity in bytes (the suffixes the manifests use).
fn bytes(q: &str) -> u64 {
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ]
    .iter()
    .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
    .unwrap_or((q, 1));
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("memory quantity {q:?}"))
        * mult
}

/// A CPU quantity in millicores.
fn millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0) as u64,
    }
}

fn quantity(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[test]
fn resources_are_requested_and_limited() {
    let r = &agent_container()["resources"];
    let get = |k: &str, res: &str| {
        quantity(&r[k][res]).unwrap_or_else(|| panic!("resources.{k}.{res} is not set"))
    };
    let (req_mem, lim_mem) = (
        bytes(&get("requests", "memory")),
        bytes(&get("limits", "memory")),
    );
    let (req_cpu, lim_cpu) = (
        millicores(&get("requests", "cpu")),
        millicores(&get("limits", "cpu")),
    );
    assert!(req_mem <= lim_mem && req_cpu <= lim_cpu, "{r:?}");
    // The first start on a node charges the pinned maps (~267 MiB) plus ~30 MiB resident to
    // the container: a lower limit fails it with ENOMEM.
    assert!(
        lim_mem >= 300 << 20,
        "memory limit {lim_mem} is below the measured need"
    );
    assert!(req_cpu > 0 && req_mem > 0);
}

#[test]
fn the_metrics_service_selects_the_agents_on_their_metrics_port() {
    let svc = the("Service", "enforcer-metrics");
    let ds = the("DaemonSet", "enforcer");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = svc["spec"]["selector"].as_mapping().expect("a selector");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&labels[k.as_str().unwrap()], v, "selector {k:?}");
    }
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"].as_u64(), Some(9966));
    let c = agent_container();
    let named = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| {
            Some(&p["name"]) == Some(&port["targetPort"])
                || p["containerPort"] == port["targetPort"]
        })
        .expect("the Service's targetPort is a port of the agent")
        .clone();
    assert_eq!(named["containerPort"].as_u64(), Some(9966));
    // kubelet probes the same listener.
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &c[probe]["httpGet"]["port"];
        assert!(
            *p == named["name"] || *p == named["containerPort"],
            "{probe}: {p:?}"
        );
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml"))
        .expect("deploy/kustomization.yaml");
    let k: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(k["kind"].as_str(), Some("Kustomization"));
    let listed: BTreeSet<String> = strings(&k["resources"]).into_iter().collect();
    let files: BTreeSet<String> = deploy_yaml_files()
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "deploy/kustomization.yaml resources vs the files in deploy/"
    );
}
