//! 10,000 malformed NetworkPolicies, generated from valid ones by mutations each of which the
//! API server's validation rejects: every one is rejected with a reason (its document and the
//! field), nothing panics, and the valid policies next to them in the same manifest folder are
//! still compiled and enforced. Library only; no root needed.

use std::collections::BTreeSet;

use enforcer_agent::compile::{compile, NodeInput};
use enforcer_agent::source::manifests::ManifestFolder;
use serde_json::{json, Value};

/// A small deterministic generator (xorshift64*), so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize].clone()
    }
}

fn valid(name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [
                    {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}},
                    {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
                ],
                "ports": [{"protocol": "TCP", "port": 80}, {"port": 8000, "endPort": 8080}, {"port": "http"}]
            }],
            "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/8"}}], "ports": [{"protocol": "UDP", "port": 53}]}]
        }
    })
}

/// One mutation the API server rejects, and a word of what it breaks (for failures).
fn mutate(rng: &mut Rng, p: &mut Value) -> &'static str {
    let spec = &mut p["spec"];
    match rng.next() % 24 {
        0 => {
            spec["ingress"][0]["ports"][0]["port"] = json!(rng.pick(&[0, 65536, 70000, -1]));
            "port out of range"
        }
        1 => {
            spec["ingress"][0]["ports"][1]["endPort"] = json!(rng.pick(&[7999, 1, 65536]));
            "endPort below port or out of range"
        }
        2 => {
            spec["ingress"][0]["ports"][2]["endPort"] = json!(9000);
            "endPort with a named port"
        }
        3 => {
            spec["ingress"][0]["ports"][0]["protocol"] =
                json!(rng.pick(&["ICMP", "tcp", "", "FOO"]));
            "unknown protocol"
        }
        4 => {
            spec["ingress"][0]["from"][2]["ipBlock"]["cidr"] =
                json!(rng.pick(&["10.0.0.0/33", "banana", "", "10.0.0/8", "fd00::/129"]));
            "invalid cidr"
        }
        5 => {
            spec["ingress"][0]["from"][2]["ipBlock"]["except"] =
                json!([rng.pick(&["11.0.0.0/16", "fd00::/16", "0.0.0.0/0", "nonsense"])]);
            "except outside cidr"
        }
        6 => {
            spec["ingress"][0]["from"][0]["ipBlock"] = json!({"cidr": "10.0.0.0/8"});
            "ipBlock with a selector in one peer"
        }
        7 => {
            spec["ingress"][0]["from"][1] = json!({});
            "empty peer"
        }
        8 => {
            spec["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["operator"] =
                json!(rng.pick(&["Foo", "in", "", "Equals"]));
            "unknown operator"
        }
        9 => {
            spec["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"] =
                json!([]);
            "In without values"
        }
        10 => {
            spec["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0] =
                json!({"key": "pod", "operator": "Exists", "values": ["x"]});
            "Exists with values"
        }
        11 => {
            spec["policyTypes"] = json!([rng.pick(&["Foo", "ingress", ""])]);
            "unknown policy type"
        }
        12 => {
            spec["podSelector"]["matchLabels"] =
                json!({rng.pick(&["bad key!", "-x", "a/b/c", ""]): "v"});
            "invalid label key"
        }
        13 => {
            spec["podSelector"]["matchLabels"] = json!({"pod": "x".repeat(64)});
            "label value too long"
        }
        14 => {
            spec["podSelector"] = json!(rng.pick(&[json!("a"), json!(5), json!([1])]));
            "podSelector of the wrong type"
        }
        15 => {
            spec["ingress"] = json!(rng.pick(&[json!({}), json!("all"), json!(1)]));
            "ingress of the wrong type"
        }
        16 => {
            spec["ingress"][0]["ports"][0]["port"] =
                json!(rng.pick(&[json!(1.5), json!(true), json!([80])]));
            "port of the wrong type"
        }
        17 => {
            spec["ingress"][0]["ports"][2]["port"] =
                json!(rng.pick(&["", "HTTP", "a-very-long-port-name", "-x", "1a b"]));
            "invalid port name"
        }
        18 => {
            p["metadata"]["name"] =
                json!(rng.pick(&["", "Upper", "a_b", "-a", "x".repeat(254).as_str()]));
            "invalid name"
        }
        19 => {
            p["metadata"]["namespace"] = json!(rng.pick(&["Upper", "a_b", "-a"]));
            "invalid namespace"
        }
        20 => {
            // (An absent podSelector is valid: it selects every pod of the namespace.)
            spec["podSelector"]["matchExpressions"] = json!([{"operator": "Exists"}]);
            "selector requirement without a key"
        }
        21 => {
            spec["egress"][0]["to"][0]["ipBlock"] = json!({"except": ["fd00::/16"]});
            "ipBlock without cidr"
        }
        22 => {
            spec["ingress"][0]["from"][1]["namespaceSelector"]["matchExpressions"] =
                json!([{"key": "ns", "operator": "NotIn"}]);
            "NotIn without values"
        }
        _ => {
            spec["egress"][0]["ports"][0]["endPort"] = json!(10);
            "endPort below port"
        }
    }
}

#[test]
fn ten_thousand_malformed_policies_are_each_rejected_and_the_valid_ones_enforced() {
    const N: usize = 10_000;
    let dir = std::env::temp_dir().join(format!("enforcer-malformed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut docs = Vec::with_capacity(N);
    let mut what = Vec::with_capacity(N);
    for i in 0..N {
        let mut p = valid(&format!("bad-{i}"));
        what.push(mutate(&mut rng, &mut p));
        docs.push(serde_json::to_string(&p).unwrap());
    }
    std::fs::write(dir.join("bad.yaml"), docs.join("\n---\n")).unwrap();
    let cluster = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}]}
"#;
    let good: Vec<String> = (0..3)
        .map(|i| serde_json::to_string(&valid(&format!("good-{i}"))).unwrap())
        .collect();
    std::fs::write(dir.join("cluster.yaml"), cluster).unwrap();
    std::fs::write(dir.join("good.yaml"), good.join("\n---\n")).unwrap();

    let snap = ManifestFolder::new(dir.clone()).read().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let errors: Vec<String> = snap.errors.iter().map(|e| e.to_string()).collect();
    // Every malformed document is reported, by its document number, with a reason.
    let reported: BTreeSet<usize> = errors
        .iter()
        .filter(|e| e.contains("bad.yaml (document "))
        .filter_map(|e| {
            let rest = e.split("(document ").nth(1)?;
            rest.split(')').next()?.parse().ok()
        })
        .collect();
    let missing: Vec<String> = (1..=N)
        .filter(|d| !reported.contains(d))
        .take(10)
        .map(|d| format!("document {d}: {} ({})", what[d - 1], docs[d - 1]))
        .collect();
    assert!(
        missing.is_empty(),
        "{} malformed policies were accepted, e.g.:\n{}",
        N - reported.len(),
        missing.join("\n")
    );
    assert!(
        errors
            .iter()
            .all(|e| e.split_once("): ").is_some_and(|(_, why)| why.len() > 10)),
        "every error gives a reason"
    );
    assert!(
        !errors.iter().any(|e| e.contains("good.yaml")),
        "{errors:?}"
    );
    // The valid ones are in force: compiled for x/a, which they isolate.
    assert_eq!(snap.cluster.policies.len(), 3);
    let tables = compile(
        &snap.cluster,
        &NodeInput {
            name: "node".into(),
            host_ips: vec![],
            audit: false,
        },
    );
    let plan = &tables.endpoints[&"x/a".parse().unwrap()];
    assert_eq!(plan.ingress_isolated_by.len(), 3);
    assert!(!plan.allows.is_empty());
}
