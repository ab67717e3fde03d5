//! Placement of pods on nodes and the manifests written for several agents (no privileges).

use std::path::PathBuf;

use super::*;
use crate::scenario::PodSpec;

fn pod(key: &str, node: Option<&str>) -> PodSpec {
    let (ns, name) = key.split_once('/').unwrap();
    PodSpec {
        namespace: ns.into(),
        name: name.into(),
        ipv4: "10.244.1.10".parse().unwrap(),
        ipv6: None,
        node: node.map(str::to_owned),
    }
}

fn step(pods: Vec<PodSpec>) -> Step {
    Step {
        name: String::new(),
        dir: PathBuf::from("<test>"),
        cluster_yaml: String::new(),
        policies_yaml: String::new(),
        pods,
        namespaces: Vec::new(),
        policy_count: 0,
        probes: Vec::new(),
    }
}

fn nodes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pods_without_node_go_to_the_default_node_and_keep_single_layout() {
    let steps = [step(vec![pod("x/a", None), pod("x/b", None)])];
    let p = Placement::plan(&steps, &[]).unwrap();
    assert!(p.is_single());
    assert_eq!(p.nodes(), ["lab"]);
    assert_eq!(p.node_of("x/b"), Some("lab"));
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\n";
    assert_eq!(p.manifests(text).unwrap(), text, "single node: verbatim");
    // No pods at all is still the default node.
    assert_eq!(
        Placement::plan(&[step(vec![])], &[]).unwrap().nodes(),
        ["lab"]
    );
}

#[test]
fn named_nodes_are_kept_and_the_default_node_comes_first() {
    let steps = [step(vec![
        pod("x/a", Some("node-b")),
        pod("x/b", None),
        pod("y/a", Some("node-a")),
    ])];
    let p = Placement::plan(&steps, &[]).unwrap();
    assert!(!p.is_single());
    assert_eq!(p.nodes(), ["lab", "node-a", "node-b"]);
    assert_eq!(p.node_of("x/a"), Some("node-b"));
    assert_eq!(p.node_of("x/b"), Some("lab"));
    assert_eq!(node_index(p.nodes(), "lab"), Some(1));
    assert_eq!(node_index(p.nodes(), "node-a"), Some(2));
    assert_eq!(node_index(p.nodes(), "node-b"), Some(3));
    assert_eq!(node_index(p.nodes(), "node-c"), None);
    // Without the default node, named nodes keep their indices.
    assert_eq!(node_index(&nodes(&["node-a", "node-b"]), "node-b"), Some(3));
    assert_eq!(node_index(&nodes(&["node-a"]), "lab"), None);
}

#[test]
fn spread_deals_unplaced_pods_round_robin_stably_across_steps() {
    let spread = nodes(&["node-a", "node-b"]);
    // Step 2 drops x/b and adds z/a; every pod keeps the node it had.
    let steps = [
        step(vec![pod("y/a", None), pod("x/a", None), pod("x/b", None)]),
        step(vec![pod("x/a", None), pod("y/a", None), pod("z/a", None)]),
    ];
    let p = Placement::plan(&steps, &spread).unwrap();
    assert_eq!(p.nodes(), ["node-a", "node-b"]);
    // Sorted over all steps: x/a, x/b, y/a, z/a.
    let got: Vec<_> = ["x/a", "x/b", "y/a", "z/a"]
        .iter()
        .map(|k| p.node_of(k).unwrap())
        .collect();
    assert_eq!(got, ["node-a", "node-b", "node-a", "node-b"]);
    // Same input, same answer.
    assert_eq!(Placement::plan(&steps, &spread).unwrap(), p);
    // Pods that name a node keep it in spread mode.
    let named = [step(vec![pod("x/a", Some("node-z")), pod("x/b", None)])];
    let p = Placement::plan(&named, &spread).unwrap();
    assert_eq!(p.node_of("x/a"), Some("node-z"));
    assert_eq!(p.node_of("x/b"), Some("node-a"));
    assert_eq!(p.nodes(), ["node-a", "node-z"]);
}

#[test]
fn placement_errors() {
    let moved = [
        step(vec![pod("x/a", Some("node-a"))]),
        step(vec![pod("x/a", Some("node-b"))]),
    ];
    assert!(matches!(
        Placement::plan(&moved, &[]),
        Err(PlacementError::NodeChanged { .. })
    ));
    let dropped = [
        step(vec![pod("x/a", Some("node-a"))]),
        step(vec![pod("x/a", None)]),
    ];
    assert!(matches!(
        Placement::plan(&dropped, &[]),
        Err(PlacementError::NodeSometimes { .. })
    ));
    let clash = [step(vec![pod("x/a", Some("lab")), pod("x/b", None)])];
    assert!(matches!(
        Placement::plan(&clash, &[]),
        Err(PlacementError::DefaultNodeNamed { .. })
    ));
    // Every pod on a node called "lab" is simply the single node.
    let all_lab = [step(vec![pod("x/a", Some("lab"))])];
    assert!(Placement::plan(&all_lab, &[]).unwrap().is_single());
    let one = [step(vec![pod("x/a", None)])];
    for bad in [&["Node-A"][..], &["a_b"], &[""], &["-a"], &["a", "a"]] {
        assert!(
            Placement::plan(&one, &nodes(bad)).is_err(),
            "--nodes {bad:?} is rejected"
        );
    }
}

#[test]
fn manifests_get_node_names_only_where_missing() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n---\n# a comment\n---\n\
apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\nspec:\n  containers: []\n---\n\
apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  namespace: x\nspec:\n  nodeName: node-z\n---\n\
apiVersion: v1\nkind: Pod\nmetadata:\n  name: c\n---\n\
apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: d\n    namespace: x\n";
    let out = inject_node_names(text, |key| match key {
        "x/a" => Some("node-a"),
        "x/b" => Some("node-a"),
        "default/c" => Some("node-c"),
        "x/d" => Some("node-d"),
        _ => None,
    })
    .unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 5, "{out}");
    assert_eq!(docs[0]["kind"], "Namespace");
    assert!(docs[0].get("spec").is_none(), "{out}");
    assert_eq!(docs[1]["spec"]["nodeName"], "node-a");
    assert_eq!(
        docs[1]["spec"]["containers"],
        serde_yaml::Value::Sequence(vec![])
    );
    assert_eq!(
        docs[2]["spec"]["nodeName"], "node-z",
        "an explicit node stays"
    );
    assert_eq!(
        docs[3]["spec"]["nodeName"], "node-c",
        "no namespace is default"
    );
    assert_eq!(docs[4]["items"][0]["spec"]["nodeName"], "node-d");
}
