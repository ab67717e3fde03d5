//! A sync that cannot program one endpoint (its policy does not fit the map) programs the
//! others, keeps the failing one's previous state in force (none of its new entries linger),
//! reports it by class, and programs it once it fits again. Needs root (BPF).

use std::collections::BTreeSet;
use std::path::PathBuf;

use aya::maps::{HashMap, Map, MapData};
use aya::programs::TestRun;
use enforcer_agent::compile::{compile, NodeInput};
use enforcer_agent::dataplane::{Dataplane, SyncErrorClass};
use enforcer_agent::model::PodKey;
use enforcer_common::endpoint::EndpointInfo;
use enforcer_common::maps as names;
use enforcer_common::policy::PolicyKey;
use enforcer_tests::packet::{tcp, SYN};
use enforcer_tests::{cluster, ip, privileged, CLUSTER, DROP, NODE_IP, PASS};

/// x/c: a second local pod.
const LOCAL_C: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {containers: [{name: c}]}
status: {podIP: 10.244.1.12, podIPs: [{ip: 10.244.1.12}]}
"#;

/// x/a allows `a_ports` from y/b, x/c allows `c_ports` from y/b.
fn policies(a_ports: &str, c_ports: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: a, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{a_ports}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: c, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: c}}}}
  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{c_ports}]}}]
"#
    )
}

fn tables(policies: &str) -> enforcer_agent::compile::Tables {
    compile(
        &cluster(&[CLUSTER, LOCAL_C, policies]),
        &NodeInput {
            name: "node".into(),
            host_ips: vec![ip(NODE_IP)],
            audit: false,
        },
    )
}

struct Pins(PathBuf);

impl Pins {
    /// A pin directory of this test process's own, empty.
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/enforcer/{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Pins(dir)
    }
}

/// What the ingress program returns for `pkt` (run on ifindex 1, x/a's in these tests).
fn run(dp: &Dataplane, pkt: &[u8]) -> u32 {
    let prog = dp.program(names::programs::POD_INGRESS).unwrap();
    prog.test_run(aya::programs::TestRunOptions {
        data_in: Some(pkt),
        repeat: 1,
        ..Default::default()
    })
    .unwrap()
    .return_value
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The policy sets of the pinned policy entries.
fn sets_in_use(pins: &std::path::Path) -> BTreeSet<u32> {
    let data = MapData::from_pin(pins.join(names::POLICY_EXACT)).unwrap();
    let map: HashMap<_, PolicyKey, u32> = HashMap::try_from(Map::HashMap(data)).unwrap();
    map.keys()
        .map(|k| u32::from_be_bytes(k.unwrap().set))
        .collect()
}

fn policy_set(pins: &std::path::Path, ifindex: u32) -> u32 {
    let data = MapData::from_pin(pins.join(names::ENDPOINTS)).unwrap();
    let map: HashMap<_, u32, EndpointInfo> = HashMap::try_from(Map::HashMap(data)).unwrap();
    map.get(&ifindex, 0).unwrap().policy_set
}

fn syn_to_a(dport: u16) -> Vec<u8> {
    tcp("10.244.2.11", "10.244.1.10", 40000, dport, SYN)
}

#[test]
fn one_endpoint_that_cannot_be_programmed_keeps_its_state_and_stops_no_other() {
    if !privileged() {
        return;
    }
    let pins = Pins::new("test-sync");
    // Room for a few dozen entries: a policy of 200 single ports does not fit.
    let mut dp = Dataplane::open_with_sizes(&pins.0, &[(names::POLICY_EXACT, 48)]).unwrap();
    let (a, c) = (PodKey::new("x", "a"), PodKey::new("x", "c"));
    // x/a runs the test packets (ifindex 1, where BPF_PROG_TEST_RUN runs them); x/c is 2.
    let pods = [(a.clone(), 1), (c.clone(), 2)];

    let report = dp
        .sync_for_test_run_many(&tables(&policies("{port: 80}", "{port: 80}")), &pods)
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(run(&dp, &syn_to_a(80)), PASS);
    let (a_set, c_set) = (policy_set(&pins.0, 1), policy_set(&pins.0, 2));

    // x/a's new policy does not fit; x/c's change does.
    let wide = "{port: 1000, endPort: 1199}";
    let report = dp
        .sync_for_test_run_many(&tables(&policies(wide, "{port: 80}, {port: 81}")), &pods)
        .unwrap();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].class, SyncErrorClass::MapFull);
    assert_eq!(report.errors[0].pod.as_deref(), Some("x/a"));
    assert_eq!(policy_set(&pins.0, 1), a_set, "x/a keeps its set in force");
    assert_ne!(policy_set(&pins.0, 2), c_set, "x/c switched to its new set");
    assert_eq!(
        run(&dp, &syn_to_a(80)),
        PASS,
        "x/a's previous policy stays in force"
    );
    assert_eq!(
        run(&dp, &syn_to_a(1000)),
        DROP,
        "x/a's new policy is not half in force"
    );
    assert_eq!(
        sets_in_use(&pins.0),
        BTreeSet::from([a_set, policy_set(&pins.0, 2)]),
        "no entries of x/a's failed set, nor of x/c's old one, are left"
    );

    // It fits again: programmed.
    let report = dp
        .sync_for_test_run_many(
            &tables(&policies("{port: 1000}", "{port: 80}, {port: 81}")),
            &pods,
        )
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_ne!(policy_set(&pins.0, 1), a_set);
    assert_eq!(run(&dp, &syn_to_a(1000)), PASS);
    assert_eq!(run(&dp, &syn_to_a(80)), DROP);
}

#[test]
fn adding_a_policy_rewrites_only_the_entries_of_the_pods_it_selects() {
    if !privileged() {
        return;
    }
    let pins = Pins::new("test-ruleids");
    let mut dp = Dataplane::open(&pins.0).unwrap();
    let pods = [(PodKey::new("x", "a"), 1), (PodKey::new("x", "c"), 2)];
    let base = policies("{port: 80}", "{port: 80}, {port: 8080}");
    let report = dp.sync_for_test_run_many(&tables(&base), &pods).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let c_set = policy_set(&pins.0, 2);

    // A policy for x/a whose name sorts before every other: with positional rule ids, every
    // rule after it (x/c's too) would be renumbered and x/c's entries rewritten.
    let first = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: aaa-first, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 443}]}]
"#;
    let added = format!("{base}{first}");
    let report = dp.sync_for_test_run_many(&tables(&added), &pods).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        policy_set(&pins.0, 2),
        c_set,
        "x/c's entries are not rewritten"
    );
    let a_entries = dp.sync_for_test_run_many(&tables(&added), &pods).unwrap();
    assert_eq!(
        a_entries.entries_written, 0,
        "a sync with no change writes nothing"
    );
    // Only x/a's new set was written: its two rules (port 80 from y/b, 443 from anyone).
    assert!(
        report.entries_written > 0 && report.entries_written <= 4,
        "entries written: {}",
        report.entries_written
    );

    // And removing it again leaves x/c alone too.
    let report = dp.sync_for_test_run_many(&tables(&base), &pods).unwrap();
    assert_eq!(
        policy_set(&pins.0, 2),
        c_set,
        "x/c's entries are not rewritten"
    );
    assert!(report.entries_written > 0);
    // Attribution: a flow allowed by x/c's rule still names x/c's policy.
    let refs = dp.rule_refs();
    assert!(
        refs.values().any(|r| r.policy.to_string() == "x/c"),
        "{refs:?}"
    );
    assert!(!refs.values().any(|r| r.policy.to_string() == "x/aaa-first"));
}

/// An endpoint whose plan is the one last programmed (the incremental compiler hands it on
/// as the same allocation) is skipped by a sync, unless an address its entries name changed
/// identity: here 10.9.9.9, which x/a's ipBlock allows on port 80, stops being this node's
/// address (every node address has the shared host identity) and gets an identity of its
/// own; the entries must follow, or its port-80 traffic would be dropped.
#[test]
fn a_plan_handed_on_unchanged_is_rewritten_when_an_address_it_names_changes_identity() {
    use enforcer_agent::compile::PrefixOwner;
    if !privileged() {
        return;
    }
    let pins = Pins::new("test-skip");
    let mut dp = Dataplane::open(&pins.0).unwrap();
    let from_block = |dport: u16| tcp("10.9.9.9", "10.244.1.10", 40000, dport, SYN);
    let block = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.9.9.9/32}}], ports: [{port: 80}]}]
"#;
    let pods = [(PodKey::new("x", "a"), 1)];
    let as_host = compile(
        &cluster(&[CLUSTER, block]),
        &NodeInput {
            name: "node".into(),
            host_ips: vec![ip(NODE_IP), ip("10.9.9.9")],
            audit: false,
        },
    );
    let net: ipnet::IpNet = "10.9.9.9/32".parse().unwrap();
    assert_eq!(as_host.prefixes.get(&net), Some(&PrefixOwner::Host));
    let report = dp.sync_for_test_run_many(&as_host, &pods).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // The node's own address: always allowed.
    assert_eq!(run(&dp, &from_block(80)), PASS);
    assert_eq!(run(&dp, &from_block(81)), PASS);

    // The same plans (shared, as the incremental compiler hands them on); only the owner of
    // the prefix changed.
    let mut as_block = as_host.clone();
    as_block.prefixes.insert(net, PrefixOwner::Cidr);
    assert!(std::sync::Arc::ptr_eq(
        &as_host.endpoints[&pods[0].0],
        &as_block.endpoints[&pods[0].0]
    ));
    let report = dp.sync_for_test_run_many(&as_block, &pods).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.entries_written > 0, "x/a's entries were rewritten");
    assert_eq!(run(&dp, &from_block(80)), PASS, "allowed by the ipBlock");
    assert_eq!(run(&dp, &from_block(81)), DROP, "no longer the node's");
    // Nothing changed since: nothing is written.
    let report = dp.sync_for_test_run_many(&as_block, &pods).unwrap();
    assert_eq!(report.entries_written, 0);
}
